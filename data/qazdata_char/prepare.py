"""
KazQAD as character-level training text: train.bin and val.bin (uint16 token ids, one per
character) and meta.json (the vocabulary; no pickle).

    python data/qazdata_char/prepare.py                               # all of KazQAD from the Hugging Face hub
    python data/qazdata_char/prepare.py --source=../shared/kazqad     # a local KazQAD JSON Lines folder or file
    python data/qazdata_char/prepare.py --source=my_corpus.txt        # any UTF-8 text, blank lines between documents

The default source can also be set with the KAZQAD_SOURCE environment variable. The layout of
each document is described in kazgpt/kazqad.py; documents are separated by a blank line.
KazQAD (Yeshpanov et al., 2024) is licensed CC BY-SA 4.0.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import run_main  # noqa: E402
from kazgpt.dataset import dataset_out_dir, write_text_dataset  # noqa: E402
from kazgpt.kazqad import kazqad_arg_parser, load_kazqad_text  # noqa: E402
from kazgpt.tokenizer import CharTokenizer  # noqa: E402


def main(argv: list[str]) -> None:
    args = kazqad_arg_parser(__doc__).parse_args(argv)
    out_dir = dataset_out_dir(args.out_dir, __file__)
    train_docs, val_docs, how = load_kazqad_text(args.source, args.nq_translate, args.nq_source)
    print(how)
    # the vocabulary: every character of both splits, so that any val text can be encoded
    chars = sorted(set("".join(train_docs)) | set("".join(val_docs)) | {"\n"})
    write_text_dataset(out_dir, train_docs, val_docs, CharTokenizer("".join(chars)))


if __name__ == "__main__":
    sys.exit(run_main(main))
