"""
KazQAD as question-answering finetuning data: examples with a loss mask on the answer tokens
(the format is in kazgpt/dataset.py, the layout in kazgpt/qa_examples.py).

    python data/qazdata_qa/prepare.py --source=../shared/kazqad --tokenizer=data/qazdata_bpe --block_size=128 --cloze=20

train: for each question of the training passages a reading example (the passage cut to fit
--block_size around the answer) and a closed-book one, and --cloze pseudo-questions per training
passage. val: the reading and closed-book examples of the held-out questions (the same passages
eval_qa.py asks about). The tokenizer must be the one of the model to finetune: --tokenizer names
a prepared dataset folder whose tokenizer to use (the one the model was pretrained on), or gpt2.
KazQAD (Yeshpanov et al., 2024) is licensed CC BY-SA 4.0.
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import UserError, bounded, run_main  # noqa: E402
from kazgpt.dataset import dataset_out_dir, load_dataset_meta, write_dataset  # noqa: E402
from kazgpt.kazqad import (kazqad_arg_parser, kazqad_passages, read_kazqad_examples, source_or_env,  # noqa: E402
                           split_rows)
from kazgpt.qa_examples import cloze_examples, encode_examples, kazqad_examples  # noqa: E402
from kazgpt.tokenizer import TiktokenTokenizer, tokenizer_from_spec  # noqa: E402


def load_tokenizer(name: str) -> tuple:
    """The tokenizer of a prepared dataset folder, or GPT-2's, and the files to write beside the
    dataset (a Kazakh BPE's tokenizer.json, which meta.json names, as in the folder it came from)."""
    if name == "gpt2":
        return TiktokenTokenizer("gpt2"), {}
    folder = Path(name)
    if not folder.is_dir():
        raise UserError(f"--tokenizer {name} is not a folder: name a prepared dataset folder "
                        "(e.g. data/qazdata_bpe, after its prepare.py) or gpt2")
    tokenizer = tokenizer_from_spec(load_dataset_meta(folder, 0)["tokenizer"])
    if tokenizer.spec["kind"] != "hf":
        return tokenizer, {}
    tokenizer_json = tokenizer.spec["tokenizer_json"]
    tokenizer.spec = {"kind": "hf", "file": "tokenizer.json"}
    return tokenizer, {"tokenizer.json": tokenizer_json}


def main(argv: list[str]) -> None:
    parser = kazqad_arg_parser(__doc__)
    parser.add_argument("--tokenizer", default="data/qazdata_bpe", help="a prepared dataset folder, or gpt2")
    parser.add_argument("--block_size", type=bounded(int, "--block_size", min=32), default=128,
                        help="tokens an example may take (prompt and answer)")
    parser.add_argument("--cloze", type=bounded(int, "--cloze", min=0), default=20,
                        help="cloze pseudo-questions per training passage, at most")
    parser.add_argument("--question_loss", action="store_true",
                        help="train examples count the loss on the question's tokens too (val: answers only)")
    parser.add_argument("--seed", type=int, default=0, help="picks the cloze sentences and spans, and the order")
    args = parser.parse_args(argv)
    out_dir = dataset_out_dir(args.out_dir, __file__)
    tokenizer, tokenizer_files = load_tokenizer(args.tokenizer)
    train_rows, val_rows, how = split_rows(read_kazqad_examples(source_or_env(args.source)))
    print(how)
    train, dropped = kazqad_examples(train_rows, tokenizer, args.block_size)
    cloze = cloze_examples(kazqad_passages(train_rows), args.cloze, tokenizer, args.block_size, args.seed)
    val, val_dropped = kazqad_examples(val_rows, tokenizer, args.block_size)
    print(f"train: {len(train)} KazQAD examples (reading and closed-book; {dropped} reading examples left out: "
          f"answer not found or too long), {len(cloze)} cloze examples; val: {len(val)} examples")
    train += cloze
    random.Random(args.seed).shuffle(train)  # kinds mixed, so packed windows hold a mix
    train_ids, train_mask = encode_examples(train, tokenizer, args.question_loss)
    val_ids, val_mask = encode_examples(val, tokenizer)
    write_dataset(out_dir, train_ids, val_ids, tokenizer, None, masks=(train_mask, val_mask),
                  extra_meta={"kind": "qa", "block_size": args.block_size, "question_loss": args.question_loss},
                  extra_files=tokenizer_files)
    print(f"{len(train_ids):,} train and {len(val_ids):,} val tokens ({sum(m & 1 for m in train_mask):,} train "
          f"tokens the loss counts): wrote {out_dir}/train.bin, val.bin, train.mask, val.mask, meta.json")


if __name__ == "__main__":
    sys.exit(run_main(main))
