"""
KazQAD tokenized with OpenAI's GPT-2 BPE (tiktoken), for finetuning GPT-2
(config/finetune_qazdata.py): train.bin and val.bin (uint16 token ids, <|endoftext|> between
documents) and meta.json.

    python data/qazdata/prepare.py                                     # KazQAD from the hub
    TIKTOKEN_CACHE_DIR=../shared/tiktoken python data/qazdata/prepare.py --source=../shared/kazqad   # offline

Sources, layout and split are those of data/qazdata_char/prepare.py. GPT-2's BPE was made for
English: on Kazakh it spends more tokens than there are characters (see data/qazdata_bpe for a
Kazakh BPE). KazQAD (Yeshpanov et al., 2024) is licensed CC BY-SA 4.0.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import run_main  # noqa: E402
from kazgpt.dataset import dataset_out_dir, write_text_dataset  # noqa: E402
from kazgpt.kazqad import kazqad_arg_parser, load_kazqad_text  # noqa: E402
from kazgpt.tokenizer import TiktokenTokenizer  # noqa: E402


def main(argv: list[str]) -> None:
    args = kazqad_arg_parser(__doc__).parse_args(argv)
    out_dir = dataset_out_dir(args.out_dir, __file__)
    tokenizer = TiktokenTokenizer("gpt2")
    train_docs, val_docs, how = load_kazqad_text(args.source, args.nq_translate, args.nq_source)
    print(how)
    write_text_dataset(out_dir, train_docs, val_docs, tokenizer)


if __name__ == "__main__":
    sys.exit(run_main(main))
