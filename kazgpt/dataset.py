"""Prepared datasets, data/<name>/{train.bin, val.bin, meta.json}: writing them, checking them
before training, and drawing training batches from them.

train.bin and val.bin are flat uint16 token ids. meta.json holds the tokenizer spec (or the name
of a tokenizer file beside it), the vocabulary size, each split's token count (checked against
the .bin files) and the val text's UTF-8 bytes (for bits per byte).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from kazgpt.cli import UserError
from kazgpt.tokenizer import Tokenizer, tokenizer_from_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
UINT16_VOCAB = 65536  # token ids 0..65535


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


def write_text_dataset(out_dir: Path, train_docs: list[str], val_docs: list[str], tokenizer: Tokenizer) -> None:
    """Encode and write a dataset of documents, and report its size and characters per token."""
    train_ids, _ = encode_documents(train_docs, tokenizer, "train")
    val_ids, val_bytes = encode_documents(val_docs, tokenizer, "val")
    write_dataset(out_dir, train_ids, val_ids, tokenizer, val_bytes)
    val_chars = sum(len(d) for d in val_docs)
    print(f"{len(train_ids):,} train and {len(val_ids):,} val tokens, vocabulary of {tokenizer.vocab_size}, "
          f"{val_chars / len(val_ids):.2f} characters per token on val: "
          f"wrote {out_dir}/train.bin, val.bin, meta.json")


def write_dataset(out_dir: Path, train_ids, val_ids, tokenizer: Tokenizer, val_text_bytes: int) -> None:
    """Write uint16 train.bin/val.bin and their meta.json."""
    if tokenizer.vocab_size > UINT16_VOCAB:
        raise UserError(f"vocabulary of {tokenizer.vocab_size} does not fit uint16 token files "
                        f"(at most {UINT16_VOCAB})")
    counts = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        arr = np.asarray(ids, dtype=np.uint16)
        arr.tofile(out_dir / f"{split}.bin")
        counts[split] = len(arr)
    write_meta(out_dir, tokenizer.spec, tokenizer.vocab_size, counts, val_text_bytes)


def write_meta(out_dir: Path, tokenizer_spec: dict, vocab_size: int, counts: dict[str, int],
               val_text_bytes: int) -> None:
    meta = {"vocab_size": vocab_size, "tokenizer": tokenizer_spec, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "val_bytes": val_text_bytes}
    (out_dir / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")


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
    """meta.json of a prepared dataset, checked against its .bin files and its tokenizer; the
    tokenizer spec is made self-contained (a tokenizer file beside the .bin files is read into it)."""
    prepare = prepare_hint(data_dir)
    for f in ("train.bin", "val.bin"):
        if not (data_dir / f).exists():
            raise UserError(f"dataset '{data_dir.name}' is not prepared ({data_dir / f} is missing): run {prepare}")
    meta = _read_meta(data_dir / "meta.json", prepare)
    meta["tokenizer"] = _self_contained_spec(meta["tokenizer"], data_dir, prepare)
    try:
        tokenizer_size = tokenizer_from_spec(meta["tokenizer"]).vocab_size
    except UserError:
        raise
    except Exception as e:  # a damaged spec: missing fields, bad tokenizer.json
        raise UserError(f"the tokenizer of {data_dir / 'meta.json'} cannot be loaded ({type(e).__name__}): "
                        f"run {prepare} again") from None
    if tokenizer_size != meta["vocab_size"]:
        raise UserError(f"the tokenizer has {tokenizer_size} entries but {data_dir / 'meta.json'} says "
                        f"{meta['vocab_size']}: they come from different runs; run {prepare} again")
    for split in ("train", "val"):
        _check_token_file(data_dir / f"{split}.bin", meta.get(f"{split}_tokens"), block_size, prepare)
    return meta


def _read_meta(path: Path, prepare: str) -> dict:
    if not path.exists():
        raise UserError(f"{path} is missing: run {prepare} again")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["vocab_size"] = int(meta["vocab_size"])
        if not isinstance(meta["tokenizer"], dict):
            raise TypeError("tokenizer is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}: {e}): run {prepare} again") from None
    return meta


def _self_contained_spec(spec: dict, data_dir: Path, prepare: str) -> dict:
    if spec.get("kind") == "hf" and "file" in spec:
        tok_path = data_dir / spec["file"]
        if not tok_path.exists():
            raise UserError(f"{tok_path} is missing: run {prepare} again")
        return {"kind": "hf", "tokenizer_json": tok_path.read_text(encoding="utf-8")}
    return spec


def _check_token_file(path: Path, expected_tokens: Optional[int], block_size: int, prepare: str) -> None:
    size = path.stat().st_size
    if size % 2:
        raise UserError(f"{path} has an odd byte count ({size}): it is truncated; run {prepare} again")
    tokens = size // 2
    if expected_tokens is not None and expected_tokens != tokens:
        raise UserError(f"{path} holds {tokens} tokens but meta.json says {expected_tokens}: "
                        f"they come from different runs; run {prepare} again")
    if tokens < block_size + 1:
        raise UserError(f"{path} holds {tokens} tokens, fewer than block_size+1 = {block_size + 1}: "
                        "use a smaller --block_size or more data")


# -----------------------------------------------------------------------------
# batches


def open_token_files(data_dir: Path) -> dict[str, np.ndarray]:
    """One read-only memmap per split: the OS page cache, not this process, holds what was read."""
    return {split: np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val")}


def batch_generator(*key: int):
    """A torch generator seeded from a tuple of integers such as (seed, step, micro-step): batches
    are a pure function of the position in training, so a resumed run draws exactly the batches
    the uninterrupted run would have, and a DDP run over W processes draws the same sequences as
    one process accumulating W times as many micro-steps. The integers are mixed by BLAKE2b of
    their 64-bit encodings, which no interpreter detail can change."""
    import torch

    digest = hashlib.blake2b(struct.pack(f"<{len(key)}q", *key), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator, device: str):
    """x, y (B, T): random windows of the token file and the same windows shifted by one."""
    import torch

    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    x, y = windows[:, :-1], windows[:, 1:]
    if device.startswith("cuda"):  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


def training_batches(data: np.ndarray, batch_size: int, block_size: int, seed: int, first_step: int,
                     micro_steps: int, first_micro: int, device: str) -> Iterator[tuple]:
    """The batches of one process in training order, from step first_step on: for each step,
    micro-steps first_micro .. first_micro + micro_steps - 1 of the global micro-step count."""
    step = first_step
    while True:
        for micro in range(first_micro, first_micro + micro_steps):
            yield get_batch(data, batch_size, block_size, batch_generator(seed, step, micro), device)
        step += 1
