"""
OpenWebText tokenized with GPT-2's BPE into uint16 train.bin/val.bin, for reproducing GPT-2 (124M)
with config/train_gpt2.py (about 9B train tokens, 17 GB on disk).

    python data/openwebtext/prepare.py                               # from the Hugging Face hub, streamed
    python data/openwebtext/prepare.py --source=/data/owt            # local .parquet, .jsonl/.json or .txt files
    python data/openwebtext/prepare.py --source=a.txt --num_proc=2

Memory stays flat whatever the input size (kazgpt/corpus.py: a stream of documents, tokenized a
window of batches at a time by worker processes). Each document goes to val with probability
val_fraction, decided by a hash of its text. Local formats: parquet and JSON Lines with a 'text'
column; .txt with documents separated by blank lines.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import run_main  # noqa: E402
from kazgpt.corpus import (check_corpus_args, corpus_arg_parser, iter_hub_documents, iter_local_documents,  # noqa: E402
                           write_streamed_dataset)
from kazgpt.dataset import dataset_out_dir  # noqa: E402
from kazgpt.tokenizer import TiktokenTokenizer  # noqa: E402

HUB_ID = "Skylion007/openwebtext"


def main(argv: list[str]) -> None:
    args = corpus_arg_parser(__doc__, val_fraction=0.0005).parse_args(argv)
    check_corpus_args(args)
    tokenizer = TiktokenTokenizer("gpt2")  # fails early, with advice, if the BPE files cannot be had
    out_dir = dataset_out_dir(args.out_dir, __file__)
    docs = iter_local_documents(Path(args.source)) if args.source else iter_hub_documents(HUB_ID)

    print(write_streamed_dataset(out_dir, docs, tokenizer, tokenizer.spec, args.val_fraction, args.num_proc))


if __name__ == "__main__":
    sys.exit(run_main(main))
