"""
KazQAD as character-level training text: train.bin and val.bin (uint16 token ids, one per
character) and meta.json (the vocabulary; no pickle).

    python data/qazdata_char/prepare.py                        # all of KazQAD from the Hugging Face hub
    python data/qazdata_char/prepare.py --source=../shared/kazqad    # a local KazQAD JSON Lines folder or file
    python data/qazdata_char/prepare.py --source=my_corpus.txt       # any UTF-8 text, documents separated by blank lines

The default source can also be set with the KAZQAD_SOURCE environment variable. The layout of
each document is described in common.kazqad_documents; documents are separated by a blank line.
KazQAD (Yeshpanov et al., 2024) is licensed CC BY-SA 4.0.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common import CharTokenizer, load_kazqad_text, run_main, write_dataset, prepare_out_dir  # noqa: E402

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="KazQAD JSON Lines file or folder, or a .txt corpus (default: $KAZQAD_SOURCE, else the hub)")
    parser.add_argument("--out_dir", default=str(Path(__file__).resolve().parent), help="where to write the files (default: this folder)")
    args = parser.parse_args()
    train_docs, val_docs, how = load_kazqad_text(args.source)
    print(how)
    train_text, val_text = "\n".join(train_docs), "\n".join(val_docs)
    tokenizer = CharTokenizer("".join(sorted(set(train_text) | set(val_text))))
    out_dir = prepare_out_dir(args.out_dir)
    write_dataset(out_dir, tokenizer.encode(train_text), tokenizer.encode(val_text), tokenizer, len(val_text.encode("utf-8")))
    print(f"{len(train_text):,} train and {len(val_text):,} val characters, vocabulary of {tokenizer.vocab_size}: wrote {out_dir}/train.bin, val.bin, meta.json")


if __name__ == "__main__":
    run_main(main)
