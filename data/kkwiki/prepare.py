"""
Kazakh Wikipedia (the Hugging Face `wikimedia/wikipedia` dataset, configuration 20231101.kk) as
pretraining data: a Kazakh byte-level BPE trained on the train documents (or an existing one),
then uint16 train.bin/val.bin, tokenizer.json and meta.json, with flat memory whatever the size.

    python data/kkwiki/prepare.py                                  # from the hub, streamed
    python data/kkwiki/prepare.py --source=/data/kkwiki            # local .parquet/.jsonl ('title', 'text') or .txt
    python data/kkwiki/prepare.py --tokenizer=data/qazdata_bpe     # an existing tokenizer.json, no BPE training

Each article is '<title>\\n<text>', ended by <|endoftext|>, the layout of KazQAD's passages, so a
model pretrained here finetunes on data/qazdata_qa without surprises. Each article goes to val
with probability --val_fraction (a hash of its text). The BPE reads the train articles as a
stream (the first --bpe_chars characters of them); tokenizing streams them again
(kazgpt/corpus.py). Wikipedia's text is CC BY-SA 4.0 (and GFDL).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import UserError, bounded, run_main  # noqa: E402
from kazgpt.corpus import (check_corpus_args, corpus_arg_parser, is_val, iter_hub_documents,  # noqa: E402
                           iter_local_documents, write_streamed_dataset)
from kazgpt.dataset import UINT16_VOCAB, dataset_out_dir  # noqa: E402
from kazgpt.files import read_text_file  # noqa: E402
from kazgpt.tokenizer import HFTokenizer, train_byte_level_bpe  # noqa: E402

HUB_ID, HUB_CONFIG = "wikimedia/wikipedia", "20231101.kk"


def documents(source):
    """A fresh stream of the articles, each '<title>\\n<text>'."""
    if source is None:
        return iter_hub_documents(HUB_ID, HUB_CONFIG, title_field="title")
    return iter_local_documents(Path(source), title_field="title")


def first_chars(docs, limit: int):
    """The documents up to the one that takes their total past limit characters."""
    total = 0
    for doc in docs:
        yield doc
        total += len(doc)
        if total >= limit:
            return


def existing_tokenizer(path: str) -> str:
    """The tokenizer.json text of --tokenizer: the file, or the one in a prepared dataset folder."""
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    try:
        text = read_text_file(file)
        HFTokenizer(text)
    except Exception as e:
        raise UserError(f"--tokenizer {path} is not a tokenizer.json, nor a folder holding one ({type(e).__name__}): "
                        "pass a tokenizer.json file, or a folder that data/qazdata_bpe/prepare.py wrote") from None
    return text


def main(argv: list[str]) -> None:
    parser = corpus_arg_parser(__doc__, val_fraction=0.005)
    parser.add_argument("--tokenizer", default=None, help="an existing tokenizer.json (or a folder holding one) "
                        "instead of training a BPE")
    parser.add_argument("--vocab_size", type=bounded(int, "--vocab_size", min=257, max=UINT16_VOCAB), default=32768,
                        help=f"BPE entries, 257 to {UINT16_VOCAB}")
    parser.add_argument("--bpe_chars", type=bounded(int, "--bpe_chars", min=1), default=300_000_000,
                        help="characters of train articles the BPE is trained on")
    args = parser.parse_args(argv)
    check_corpus_args(args)
    out_dir = dataset_out_dir(args.out_dir, __file__)
    if args.tokenizer:
        tokenizer_json = existing_tokenizer(args.tokenizer)
    else:
        train_docs = (d for d in documents(args.source) if not is_val(d, args.val_fraction))
        tokenizer_json = train_byte_level_bpe(first_chars(train_docs, args.bpe_chars), args.vocab_size)
    tokenizer = HFTokenizer(tokenizer_json)
    worker_spec = dict(tokenizer.spec)
    tokenizer.spec = {"kind": "hf", "file": "tokenizer.json"}  # meta.json names the file; checkpoints embed it
    print(write_streamed_dataset(out_dir, documents(args.source), tokenizer, worker_spec, args.val_fraction,
                                 args.num_proc, extra_files={"tokenizer.json": tokenizer_json}))


if __name__ == "__main__":
    sys.exit(run_main(main))
