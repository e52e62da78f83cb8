"""
OpenWebText tokenized with GPT-2's BPE into uint16 train.bin/val.bin, for reproducing GPT-2 (124M)
with config/train_gpt2.py (about 9B train tokens, 17 GB on disk).

    python data/openwebtext/prepare.py                               # from the Hugging Face hub, streamed
    python data/openwebtext/prepare.py --source=/data/owt            # local .parquet, .jsonl/.json or .txt files
    python data/openwebtext/prepare.py --source=a.txt --num_proc=2

Memory stays bounded whatever the input size: documents are read as a stream, tokenized by
worker processes a window of batches at a time, and each window's tokens are appended to the
.bin files before the next one is read. Each document goes to val with probability val_fraction,
decided by a hash of its text (deterministic, independent of order and of num_proc).
Local formats: parquet and JSON Lines with a 'text' column; .txt with documents separated by
blank lines.
"""
import argparse
import hashlib
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kazgpt.cli import UserError, run_main  # noqa: E402
from kazgpt.dataset import DATASET_FILES, dataset_out_dir, meta_text  # noqa: E402
from kazgpt.files import remove_stale_temporaries, temporary_name, write_files_atomically  # noqa: E402
from kazgpt.tokenizer import TiktokenTokenizer  # noqa: E402

HUB_ID = "Skylion007/openwebtext"
BATCH_BYTES = 1 << 20  # text per worker task


def iter_local_documents(path: Path) -> Iterator[str]:
    try:
        yield from _iter_local_documents(path)
    except UnicodeDecodeError as e:
        raise UserError(f"a file under {path} is not UTF-8 text (byte {e.start}): convert it to UTF-8 first") from None


def _iter_local_documents(path: Path) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.suffix in (".parquet", ".jsonl", ".json", ".txt")]
    if not files:
        raise UserError(f"{path} holds no .parquet, .jsonl, .json or .txt files")
    for f in files:
        if f.suffix == ".parquet":
            rows = _parquet_texts(f)
        elif f.suffix in (".jsonl", ".json"):
            rows = _jsonl_texts(f)
        else:
            rows = enumerate(_txt_documents(f), 1)
        for n, text in rows:
            if not isinstance(text, str):
                raise UserError(f"{f} row {n}: 'text' is {type(text).__name__}, not text; fix or drop that row")
            yield text


def _parquet_texts(f: Path) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        if "text" not in pf.schema_arrow.names:
            raise UserError(f"{f} has no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
        n = 0
        for batch in pf.iter_batches(columns=["text"], batch_size=1024):
            for value in batch.column(0).to_pylist():
                n += 1
                yield n, value
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{f} is not a readable parquet file ({type(e).__name__}: {str(e)[:120]})") from None


def _jsonl_texts(f: Path) -> Iterator[tuple[int, object]]:
    with open(f, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{f} line {n} is not a JSON object with a 'text' field") from None


def _txt_documents(f: Path) -> Iterator[str]:
    with open(f, encoding="utf-8") as fh:
        doc: list[str] = []
        for line in fh:
            if line.strip():
                doc.append(line)
            elif doc:  # a blank line ends a document; the newline before it is not part of it
                yield "".join(doc).rstrip("\n")
                doc = []
        if doc:
            yield "".join(doc).rstrip("\n")


def iter_hub_documents() -> Iterator[str]:
    try:
        from datasets import load_dataset

        ds = load_dataset(HUB_ID, split="train", streaming=True)
        for row in ds:
            yield row["text"]
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"could not stream {HUB_ID} from the Hugging Face hub ({type(e).__name__}); "
                        "offline, pass local files with --source=PATH") from None


def batches(docs: Iterator[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_tokenizer = None


def tokenize_batch(args: tuple[list[str], float]) -> tuple[bytes, bytes, int, int]:
    """(train token bytes, val token bytes, val UTF-8 bytes, documents) for one batch, in a worker."""
    import numpy as np

    global _tokenizer
    if _tokenizer is None:
        _tokenizer = TiktokenTokenizer("gpt2")
    docs, val_fraction = args
    train, val, val_bytes = [], [], 0
    threshold = int(val_fraction * 2**64)
    for doc in docs:
        ids = _tokenizer.encode(doc)
        ids.append(_tokenizer.eot_token)
        raw = doc.encode("utf-8", errors="replace")
        if int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") < threshold:
            val.extend(ids)
            val_bytes += len(raw)
        else:
            train.extend(ids)
    return np.array(train, dtype=np.uint16).tobytes(), np.array(val, dtype=np.uint16).tobytes(), val_bytes, len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help="local files or folder (default: stream from the hub)")
    parser.add_argument("--out_dir", default=None, help="where to write (default: this folder)")
    parser.add_argument("--val_fraction", type=float, default=0.0005)
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        raise UserError(f"--val_fraction must be in (0, 1), got {args.val_fraction}")
    if args.num_proc < 1:
        raise UserError(f"--num_proc must be at least 1, got {args.num_proc}")
    if args.source is not None and not Path(args.source).exists():
        raise UserError(f"--source {args.source} does not exist")
    tokenizer = TiktokenTokenizer("gpt2")  # fails early, with advice, if the BPE files cannot be had
    out_dir = dataset_out_dir(args.out_dir, __file__)
    docs = iter_local_documents(Path(args.source)) if args.source else iter_hub_documents()

    from tqdm import tqdm

    counts = {"train": 0, "val": 0}
    totals = {"val_bytes": 0, "docs": 0}
    remove_stale_temporaries(out_dir, DATASET_FILES)
    tmp = {split: temporary_name(out_dir / f"{split}.bin") for split in counts}
    files = {split: open(tmp[split], "wb") for split in counts}

    def tokenize_window(pool: Pool, window: list[list[str]], bar: tqdm) -> None:
        for train_bytes, val_bytes, val_text_bytes, n_docs in pool.map(tokenize_batch,
                                                                       [(b, args.val_fraction) for b in window]):
            for split, chunk in (("train", train_bytes), ("val", val_bytes)):
                files[split].write(chunk)
                counts[split] += len(chunk) // 2
            totals["val_bytes"] += val_text_bytes
            totals["docs"] += n_docs
            bar.update(n_docs)

    try:
        with Pool(args.num_proc) as pool, tqdm(desc="tokenizing", unit="doc") as bar:
            window: list[list[str]] = []
            for batch in batches(docs):
                window.append(batch)
                if len(window) == 2 * args.num_proc:  # batches in flight: this bounds memory
                    tokenize_window(pool, window, bar)
                    window = []
            tokenize_window(pool, window, bar)
    except BaseException:  # leave no partial files behind; the old .bin files stay as they were
        for f in files.values():
            f.close()
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    for f in files.values():
        f.close()
    if counts["val"] == 0 or counts["train"] == 0:
        for p in tmp.values():
            p.unlink()
        empty = "val" if counts["train"] else "train"
        raise UserError(f"{totals['docs']} documents gave an empty {empty} split: "
                        "use more data or a larger --val_fraction")
    # complete files replace the old ones only now, with meta.json, all together
    write_files_atomically(out_dir, {"meta.json": meta_text(tokenizer.spec, tokenizer.vocab_size, counts,
                                                            totals["val_bytes"])},
                           written={p: out_dir / f"{split}.bin" for split, p in tmp.items()})
    print(f"{totals['docs']:,} documents: {counts['train']:,} train and {counts['val']:,} val tokens in {out_dir}")


if __name__ == "__main__":
    run_main(main)
