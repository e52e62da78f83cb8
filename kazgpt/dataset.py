"""Prepared datasets, data/<name>/{train.bin, val.bin, meta.json}: writing them, checking them
before training, and drawing training batches from them.

train.bin and val.bin are flat uint16 token ids. meta.json holds the tokenizer spec (or the name
of a tokenizer file beside it), the vocabulary size, each split's token count (checked against
the .bin files), the val text's UTF-8 bytes (for bits per byte) and the dataset's kind:

  text  documents one after another; a batch is random windows of the token file.
  qa    question-answering examples one after another (kazgpt/qa_examples.py), each at most
        meta["block_size"] tokens, with train.mask/val.mask beside the .bin files: one uint8 per
        token, bit 1 (LOSS) on answer tokens, the only ones the loss counts, bit 2 (START) on
        the first token of each example, and bits 4 and 8 (SPAN_START, SPAN_END) on the passage
        tokens where a reading example's answer starts and ends, which a span head learns to point
        at, and bit 16 (MATCH) on the passage tokens of words the question shares. A batch is
        windows that start at example starts.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from kazgpt import REPO_ROOT
from kazgpt.cli import UserError
from kazgpt.files import atomic_write, write_text
from kazgpt.tokenizer import Tokenizer
from model import SPAN_BOTH_TARGET, SPAN_END_TARGET, SPAN_START_TARGET


UINT16_VOCAB = 65536  # token ids 0..65535
LOSS, START = 1, 2  # bits of a mask file: the token is an answer token / the first token of an example
SPAN_START, SPAN_END = 4, 8  # ... the first / last token of the answer's span in the passage
MATCH = 16  # ... a passage token of a word that the question shares (kazgpt/qa_examples.py's question_matches)
# a batch's targets y carry the span where they count nothing else (passage tokens), as model.py's values
SPAN_TARGETS = {SPAN_START: SPAN_START_TARGET, SPAN_END: SPAN_END_TARGET, SPAN_START | SPAN_END: SPAN_BOTH_TARGET}


def dataset_out_dir(path: Optional[str], script: str) -> Path:
    """The folder a prepare script writes to (default: the script's own folder), created if needed."""
    out = Path(path) if path else Path(script).resolve().parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out_dir {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def encode_documents(docs: list[str], tokenizer: Tokenizer, desc: str) -> tuple[list[int], int]:
    """Token ids of the documents and their UTF-8 byte count. Documents are separated by the
    tokenizer's end-of-text token, or by a blank line where it has none (char-level)."""
    from tqdm import tqdm

    ids: list[int] = []
    n_bytes = 0
    for i, doc in enumerate(tqdm(docs, desc=desc, unit="doc", leave=False)):
        if tokenizer.eot_token is None and i > 0:
            doc = "\n" + doc  # a blank line between documents: each ends in a newline already
        ids.extend(tokenizer.encode(doc))
        n_bytes += len(doc.encode("utf-8"))
        if tokenizer.eot_token is not None:
            ids.append(tokenizer.eot_token)
    return ids, n_bytes


def write_text_dataset(out_dir: Path, train_docs: list[str], val_docs: list[str], tokenizer: Tokenizer,
                       extra_files: Optional[dict[str, str]] = None) -> None:
    """Encode and write a dataset of documents (with extra_files such as tokenizer.json), and report
    its size and characters per token."""
    train_ids, _ = encode_documents(train_docs, tokenizer, "train")
    val_ids, val_bytes = encode_documents(val_docs, tokenizer, "val")
    write_dataset(out_dir, train_ids, val_ids, tokenizer, val_bytes, extra_files=extra_files)
    val_chars = sum(len(d) for d in val_docs)
    print(f"{len(train_ids):,} train and {len(val_ids):,} val tokens, vocabulary of {tokenizer.vocab_size}, "
          f"{val_chars / len(val_ids):.2f} characters per token on val: "
          f"wrote {out_dir}/train.bin, val.bin, meta.json")


def write_dataset(out_dir: Path, train_ids, val_ids, tokenizer: Tokenizer, val_text_bytes: Optional[int],
                  masks: Optional[tuple] = None, extra_meta: Optional[dict] = None,
                  extra_files: Optional[dict[str, str]] = None) -> None:
    """Write uint16 train.bin/val.bin, their uint8 .mask files for a QA dataset (masks: train's, val's),
    extra_files (e.g. tokenizer.json) and, last, meta.json (with extra_meta, e.g. the kind): each file
    atomically, and meta.json's token counts tell a reader whether the files belong together."""
    counts = {}
    for i, (split, ids) in enumerate((("train", train_ids), ("val", val_ids))):
        arr = np.asarray(ids, dtype=np.uint16)
        counts[split] = len(arr)
        with atomic_write(out_dir / f"{split}.bin") as f:
            f.write(arr.tobytes())
        if masks is not None:
            with atomic_write(out_dir / f"{split}.mask") as f:
                f.write(np.asarray(masks[i], dtype=np.uint8).tobytes())
    for name, text in (extra_files or {}).items():
        write_text(out_dir / name, text)
    write_text(out_dir / "meta.json", meta_text(tokenizer.spec, tokenizer.vocab_size, counts, val_text_bytes,
                                                extra_meta))


def meta_text(tokenizer_spec: dict, vocab_size: int, counts: dict[str, int], val_text_bytes: Optional[int],
              extra: Optional[dict] = None) -> str:
    """meta.json's text."""
    meta = {"kind": "text", "vocab_size": vocab_size, "tokenizer": tokenizer_spec, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "val_bytes": val_text_bytes, **(extra or {})}
    return json.dumps(meta, ensure_ascii=False, indent=1)


def bits_per_byte(loss_nats: float, tokens: int, text_bytes: int) -> float:
    """Loss per token (nats) turned into bits per UTF-8 byte, comparable across tokenizers."""
    return loss_nats * tokens / text_bytes / math.log(2)


# -----------------------------------------------------------------------------
# checking a prepared dataset before training on it


def prepare_hint(data_dir: Path) -> str:
    """The command that (re)makes a dataset folder: its own prepare script where the repo has one."""
    script = REPO_ROOT / "data" / data_dir.name / "prepare.py"
    if script.is_file() and data_dir.resolve() == script.parent:
        return f"python data/{data_dir.name}/prepare.py"
    return f"python data/<dataset>/prepare.py --out_dir={data_dir} (the prepare script that made it)"


def load_dataset_meta(data_dir: Path, block_size: int) -> dict:
    """meta.json of a prepared dataset, checked against the files beside it: each there, and the
    token counts meta.json gives (a prepare that was stopped leaves them disagreeing). A tokenizer
    file beside the .bin files is read into the tokenizer spec, so that checkpoints carry it whole."""
    prepare = prepare_hint(data_dir)
    missing = [f for f in ("train.bin", "val.bin", "meta.json") if not (data_dir / f).is_file()]
    if missing:
        raise UserError(f"dataset '{data_dir.name}' is not prepared ({data_dir / missing[0]} is missing): "
                        f"run {prepare}")
    try:
        meta = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))
        spec = meta["tokenizer"]
        if spec.get("kind") == "hf" and "file" in spec:
            meta["tokenizer"] = {"kind": "hf", "tokenizer_json": (data_dir / spec["file"]).read_text(encoding="utf-8")}
        sizes = {}
        for split in ("train", "val"):
            sizes[f"{split}.bin"] = 2 * meta[f"{split}_tokens"]  # uint16 ids
            if meta.get("kind") == "qa":
                sizes[f"{split}.mask"] = meta[f"{split}_tokens"]  # a byte per token
        wrong = [f for f, size in sizes.items() if (data_dir / f).stat().st_size != size]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{data_dir / 'meta.json'} or a file it names is missing or damaged ({type(e).__name__}: "
                        f"{str(e)[:100]}): run {prepare} again") from None
    if wrong:
        raise UserError(f"{data_dir / wrong[0]} does not hold the tokens meta.json counts: the files come from "
                        f"different runs; run {prepare} again")
    if min(meta["train_tokens"], meta["val_tokens"]) < block_size + 1:
        raise UserError(f"a split of {data_dir} holds fewer tokens than block_size+1 = {block_size + 1}: use a "
                        "smaller --block_size or more data")
    if meta.setdefault("kind", "text") == "qa" and block_size < meta["block_size"]:
        raise UserError(f"the examples of {data_dir} are up to {meta['block_size']} tokens long, more than "
                        f"block_size {block_size}: use --block_size={meta['block_size']}, or prepare them with "
                        f"--block_size={block_size}")
    return meta


# -----------------------------------------------------------------------------
# batches


class ExampleSplit:
    """One split of a QA dataset: tokens, mask and where each example starts."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray):
        self.tokens, self.mask = tokens, mask
        self.starts = np.flatnonzero(mask & START)

    def __len__(self) -> int:
        return len(self.tokens)

    def windows(self, batch_size: int, block_size: int, generator,
                packed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Token windows (B, T+1) from random example starts, whether each token's loss counts (the
        answer tokens of the window's first example, and with packed those of the examples after it
        in the window too, else the rest of the window is padding), the span bits of the first
        example (a window has one span to point at) and whether each token is a question match."""
        import torch

        starts = self.starts[torch.randint(len(self.starts), (batch_size,), generator=generator).numpy()]
        positions = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
        inside = positions < len(self.tokens)
        positions = np.minimum(positions, len(self.tokens) - 1)
        flags = self.mask[positions]
        counts = (flags & LOSS).astype(bool) & inside
        first = (np.cumsum((flags & START) > 0, axis=1) <= 1) & inside
        if not packed:
            counts &= first
        return (self.tokens[positions].astype(np.int64), counts, np.where(first, flags & (SPAN_START | SPAN_END), 0),
                (flags & MATCH).astype(bool) & inside)


def open_token_files(data_dir: Path, kind: str = "text") -> dict:
    """Each split as a read-only memmap (the OS page cache, not this process, holds what was read);
    for a QA dataset, an ExampleSplit over its tokens and mask."""
    splits = {}
    for split in ("train", "val"):
        tokens = np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r")
        mask = np.memmap(data_dir / f"{split}.mask", dtype=np.uint8, mode="r") if kind == "qa" else None
        splits[split] = tokens if mask is None else ExampleSplit(tokens, mask)
    return splits


def batch_generator(*key: int):
    """A torch generator seeded from a tuple of integers such as (seed, step, micro-step): batches
    are a pure function of the position in training, so a resumed run draws exactly the batches
    the uninterrupted run would have, and a DDP run over W processes draws the same sequences as
    one process accumulating W times as many micro-steps. The integers are mixed by BLAKE2b of
    their 64-bit encodings, which no interpreter detail can change."""
    import torch

    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def get_batch(data, batch_size: int, block_size: int, generator, device: str, packed: bool = True):
    """x, y (B, T): random windows of the token file and the same windows shifted by one, and the
    question matches of x's tokens (B, T) (None for a text dataset). From an ExampleSplit, windows
    that start at examples, with y = -1 (ignored by the loss) where the loss does not count, or the
    SPAN_TARGETS of the first example's answer span where it starts and ends."""
    import torch

    matches = None
    if isinstance(data, ExampleSplit):
        windows, counts, span, matched = data.windows(batch_size, block_size, generator, packed)
        windows, counts = torch.from_numpy(windows), torch.from_numpy(counts)
        x, y = windows[:, :-1], windows[:, 1:].masked_fill(~counts[:, 1:], -1)
        for bits, target in SPAN_TARGETS.items():  # on x's positions: the span head reads token t at t
            y = y.masked_fill(torch.from_numpy(span[:, :-1] == bits), target)
        matches = torch.from_numpy(matched[:, :-1])
    else:
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
        windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
        x, y = windows[:, :-1], windows[:, 1:]
    return _to_device(x, device), _to_device(y, device), _to_device(matches, device)


def _to_device(t, device: str):
    if t is None:
        return None
    if device.startswith("cuda"):  # pinned memory lets the copy overlap with compute
        return t.pin_memory().to(device, non_blocking=True)
    return t.contiguous().to(device)


def training_batches(data, batch_size: int, block_size: int, seed: int, first_step: int, micro_steps: int,
                     first_micro: int, device: str, packed: bool = True) -> Iterator[tuple]:
    """The batches of one process in training order, from step first_step on: for each step,
    micro-steps first_micro .. first_micro + micro_steps - 1 of the global micro-step count."""
    step = first_step
    while True:
        for micro in range(first_micro, first_micro + micro_steps):
            yield get_batch(data, batch_size, block_size, batch_generator(seed, step, micro), device, packed)
        step += 1
