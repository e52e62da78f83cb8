"""Large text corpora (OpenWebText, Kazakh Wikipedia) turned into train.bin/val.bin with flat
memory, whatever their size: documents are read as a stream (from the hub, or local .parquet,
.jsonl/.json or .txt files), tokenized by worker processes a window of batches at a time, and
each window's tokens are appended to the .bin files before the next one is read. Each document
goes to val with probability val_fraction, decided by a hash of its text (deterministic,
independent of order and of num_proc). The finished files replace the old dataset together.

Local formats: parquet and JSON Lines with a 'text' column (and, where title_field is given, that
column as the document's first line); .txt with documents separated by blank lines.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import hashlib
import json
import os
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator, Optional

from kazgpt.cli import ArgumentParser, UserError, bounded
from kazgpt.dataset import meta_text
from kazgpt.files import atomic_write, write_text
from kazgpt.tokenizer import Tokenizer, tokenizer_from_spec

BATCH_BYTES = 1 << 20  # text per worker task


def corpus_arg_parser(doc: str, val_fraction: float) -> ArgumentParser:
    """The options every corpus prepare script takes; check_corpus_args checks them."""
    parser = ArgumentParser(doc)
    parser.add_argument("--source", default=None, help="local files or folder (default: stream from the hub)")
    parser.add_argument("--out_dir", default=None, help="where to write (default: the script's folder)")
    parser.add_argument("--val_fraction", type=bounded(float, "--val_fraction", above=0, below=1),
                        default=val_fraction, help="of the documents, by hash")
    parser.add_argument("--num_proc", type=bounded(int, "--num_proc", min=1),
                        default=max(1, (os.cpu_count() or 2) // 2), help="tokenizing processes")
    return parser


def check_corpus_args(args: argparse.Namespace) -> None:
    if args.source is not None and not Path(args.source).exists():
        raise UserError(f"--source {args.source} does not exist: pass a file or a folder of files")


def iter_local_documents(path: Path, title_field: Optional[str] = None) -> Iterator[str]:
    """The documents of a local file or folder (its .parquet, .jsonl/.json and .txt files, sorted)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [f for f in files if f.suffix in (".parquet", ".jsonl", ".json", ".txt")]
    if not files:
        raise UserError(f"{path} holds no .parquet, .jsonl, .json or .txt files")
    for f in files:
        try:
            if f.suffix == ".parquet":
                rows = _parquet_rows(f, title_field)
            elif f.suffix in (".jsonl", ".json"):
                rows = _jsonl_rows(f, title_field)
            else:
                rows = ((n, doc, None) for n, doc in enumerate(_txt_documents(f), 1))
            for n, text, title in rows:
                yield titled(title, text)
        except UnicodeDecodeError as e:
            raise UserError(f"{f} is not UTF-8 text (byte {e.start}): convert it to UTF-8 first") from None


def titled(title: object, text: str) -> str:
    """A document with its title as the first line, where it has one: '<title>\n<text>'."""
    return f"{title.strip()}\n{text}" if isinstance(title, str) and title.strip() else text


def _parquet_rows(f: Path, title_field: Optional[str]) -> Iterator[tuple[int, object, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        columns = ["text"] + ([title_field] if title_field in names else [])
        n = 0
        for batch in pf.iter_batches(columns=columns, batch_size=1024):
            texts = batch.column(0).to_pylist()
            titles = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, title in zip(texts, titles):
                n += 1
                yield n, text, title
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{f} is not a readable parquet file ({type(e).__name__}: {str(e)[:100]})") from None


def _jsonl_rows(f: Path, title_field: Optional[str]) -> Iterator[tuple[int, object, object]]:
    with open(f, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    yield n, row["text"], row.get(title_field) if title_field else None
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
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


def iter_hub_documents(hub_id: str, config: Optional[str] = None, title_field: Optional[str] = None
                       ) -> Iterator[str]:
    """The documents of a hub dataset's train split, streamed."""
    try:
        from datasets import load_dataset

        for row in load_dataset(hub_id, config, split="train", streaming=True):
            yield titled(row.get(title_field) if title_field else None, row["text"])
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"could not stream {hub_id} from the Hugging Face hub ({type(e).__name__}); "
                        "offline, pass local files with --source=PATH") from None


def is_val(doc: str, val_fraction: float) -> bool:
    """Whether a document belongs to val: a hash of its text below val_fraction of the hash range."""
    digest = hashlib.blake2b(doc.encode("utf-8", errors="replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < int(val_fraction * 2**64)


def batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch, size = [], 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


_worker_tokenizer: Optional[Tokenizer] = None


def _start_worker(spec: dict) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_spec(spec)


def _tokenize_batch(args: tuple[list[str], float]) -> tuple[bytes, bytes, int, int]:
    """(train token bytes, val token bytes, val UTF-8 bytes, documents) for one batch, in a worker."""
    import numpy as np

    docs, val_fraction = args
    train, val, val_bytes = [], [], 0
    for doc in docs:
        ids = _worker_tokenizer.encode(doc) + [_worker_tokenizer.eot_token]
        if is_val(doc, val_fraction):
            val.extend(ids)
            val_bytes += len(doc.encode("utf-8", errors="replace"))
        else:
            train.extend(ids)
    return np.array(train, dtype=np.uint16).tobytes(), np.array(val, dtype=np.uint16).tobytes(), val_bytes, len(docs)


def write_streamed_dataset(out_dir: Path, docs: Iterable[str], tokenizer: Tokenizer, worker_spec: dict,
                           val_fraction: float, num_proc: int, extra_files: Optional[dict[str, str]] = None) -> str:
    """Tokenize a stream of documents into out_dir's train.bin/val.bin, then write extra_files and
    meta.json, in num_proc workers that build their tokenizer from worker_spec. The .bin files replace
    the old ones only once complete. Returns a line saying what was written."""
    from tqdm import tqdm

    counts, totals = {"train": 0, "val": 0}, {"val_bytes": 0, "docs": 0}
    with contextlib.ExitStack() as stack:
        files = {split: stack.enter_context(atomic_write(out_dir / f"{split}.bin")) for split in counts}
        pool = stack.enter_context(Pool(num_proc, initializer=_start_worker, initargs=(worker_spec,)))
        bar = stack.enter_context(tqdm(desc="tokenizing", unit="doc"))
        window: list[list[str]] = []
        for batch in itertools.chain(batches(docs), [None]):  # None: the end, which tokenizes the last window
            if batch is not None:
                window.append(batch)
            if len(window) < 2 * num_proc and batch is not None:  # batches in flight: this bounds memory
                continue
            for train_bytes, val_bytes, val_text_bytes, n_docs in pool.map(_tokenize_batch,
                                                                           [(b, val_fraction) for b in window]):
                for split, chunk in (("train", train_bytes), ("val", val_bytes)):
                    files[split].write(chunk)
                    counts[split] += len(chunk) // 2
                totals["val_bytes"] += val_text_bytes
                totals["docs"] += n_docs
                bar.update(n_docs)
            window = []
        if counts["val"] == 0 or counts["train"] == 0:
            raise UserError(f"{totals['docs']} documents gave an empty {'val' if counts['train'] else 'train'} "
                            "split: use more data or a larger --val_fraction")
    for name, text in (extra_files or {}).items():
        write_text(out_dir / name, text)
    write_text(out_dir / "meta.json", meta_text(tokenizer.spec, tokenizer.vocab_size, counts, totals["val_bytes"]))
    return f"{totals['docs']:,} documents: {counts['train']:,} train and {counts['val']:,} val tokens in {out_dir}"
