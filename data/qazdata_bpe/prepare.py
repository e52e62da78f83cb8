"""
KazQAD with a Kazakh tokenizer: trains a byte-level BPE (Hugging Face `tokenizers`) on the train
split only, saves it as tokenizer.json beside train.bin/val.bin (uint16 ids, <|endoftext|>
between documents) and meta.json, and prints characters per token on val for this tokenizer
and for GPT-2's.

    python data/qazdata_bpe/prepare.py --source=../shared/kazqad --vocab_size=8192

Byte-level: any text encodes, nothing is unknown. Sources, layout and split are those of
data/qazdata_char/prepare.py. KazQAD (Yeshpanov et al., 2024) is licensed CC BY-SA 4.0.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import UserError, bounded, run_main  # noqa: E402
from kazgpt.dataset import UINT16_VOCAB, dataset_out_dir, write_text_dataset  # noqa: E402
from kazgpt.kazqad import kazqad_arg_parser, load_kazqad_text  # noqa: E402
from kazgpt.tokenizer import HFTokenizer, TiktokenTokenizer, train_byte_level_bpe  # noqa: E402


def main(argv: list[str]) -> None:
    parser = kazqad_arg_parser(__doc__)
    parser.add_argument("--vocab_size", type=bounded(int, "--vocab_size", min=257, max=UINT16_VOCAB), default=8192,
                        help=f"BPE vocabulary size, 257 to {UINT16_VOCAB} (uint16 ids)")
    args = parser.parse_args(argv)
    out_dir = dataset_out_dir(args.out_dir, __file__)
    train_docs, val_docs, how = load_kazqad_text(args.source, args.nq_translate, args.nq_source)
    print(how)
    tokenizer_json = train_byte_level_bpe(train_docs, args.vocab_size)
    tokenizer = HFTokenizer(tokenizer_json)
    # meta.json names the tokenizer file rather than holding its text; checkpoints embed the text
    tokenizer.spec = {"kind": "hf", "file": "tokenizer.json"}
    write_text_dataset(out_dir, train_docs, val_docs, tokenizer, extra_files={"tokenizer.json": tokenizer_json})

    val_text = "".join(val_docs)
    ours = len(val_text) / len(tokenizer.encode(val_text))
    try:
        gpt2 = len(val_text) / len(TiktokenTokenizer("gpt2").encode(val_text))
        print(f"characters per token on val: Kazakh BPE {ours:.2f}, GPT-2 BPE {gpt2:.2f} ({ours / gpt2:.1f}x)")
    except UserError as e:
        print(f"characters per token on val: Kazakh BPE {ours:.2f} (GPT-2 BPE not available: {e})")


if __name__ == "__main__":
    sys.exit(run_main(main))
