"""
Helpers shared by train.py, sample.py, bench.py and the data/*/prepare.py scripts, kept in one
place so that none of them copies another: one-line user errors, rank-0 logging, device and
dtype setup, tokenizers, the KazQAD reader and text layout, dataset metadata and checkpoint I/O.

Nothing here touches CUDA at import time; torch-heavy imports happen inside functions where the
prepare scripts would otherwise pay for them.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import os
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parent

# -----------------------------------------------------------------------------
# errors and logging


class UserError(Exception):
    """Bad input from the user. Scripts report it as one line on stderr and exit with code 2."""


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's main(): a UserError becomes one clear line and exit code 2, no traceback."""
    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`python sample.py | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(code or 0)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, so that a DDP run logs each line once."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def closest(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


# -----------------------------------------------------------------------------
# device and dtype


def resolve_device(requested: Optional[str]) -> str:
    """The device to run on: the requested one if it exists, else cuda, then mps, then cpu."""
    import torch

    mps_available = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if not requested:
        return "cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu"
    kind = requested.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise UserError(f"unknown device '{requested}': use cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={requested} but this machine has no CUDA GPU: use --device=cpu, or leave --device out to pick automatically")
    if kind == "mps" and not mps_available:
        raise UserError("--device=mps but MPS is not available here: use --device=cpu, or leave --device out to pick automatically")
    return requested


def cpu_supports_bf16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_bf16_speedup() -> float:
    """How many times faster a bf16 matmul runs than a float32 one on this CPU (0 without bf16).
    A 512-square matmul for 50 ms each: 3.6x on a Xeon with AMX, 0.6x with oneDNN held to
    AVX512-BF16 on the same CPU, so a feature flag alone cannot tell."""
    if not cpu_supports_bf16():
        return 0.0
    return measure_matmul_flops("cpu", "bfloat16", n=512, seconds=0.05) / measure_matmul_flops("cpu", "float32", n=512, seconds=0.05)


def resolve_dtype(requested: Optional[str], device: str, training: bool = False) -> str:
    """The autocast dtype. Defaults: bf16 on CUDA where supported (fp16 otherwise); for training on a
    CPU whose bf16 matmuls are at least 1.5x faster than fp32, bf16 (on a Xeon with AMX the quick
    start's step drops by a quarter at the same val loss, see BENCHMARKS.md); float32 elsewhere,
    and for sampling on CPU (one-token decode steps measured slower in bf16)."""
    import torch

    kind = device.split(":")[0]
    if requested is None:
        if kind == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if kind == "cpu" and training and cpu_bf16_speedup() >= 1.5:
            return "bfloat16"
        return "float32"
    if requested not in ("float32", "bfloat16", "float16"):
        raise UserError(f"unknown dtype '{requested}': use float32, bfloat16 or float16")
    if requested == "bfloat16":
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("bfloat16 is not supported on this GPU: use --dtype=float16 (or float32)")
        if kind == "cpu" and not cpu_supports_bf16():
            raise UserError("this CPU has no bfloat16 support: use --dtype=float32")
    if requested == "float16" and kind != "cuda":
        raise UserError(f"float16 autocast is only used on CUDA: use --dtype=float32 (or bfloat16) on {kind}")
    return requested


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_context(device: str, dtype: str):
    """Mixed precision for the forward pass; a no-op in float32."""
    import torch

    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch_dtype(dtype))


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, SXM parts.
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}
_measured_peaks: dict[tuple[str, str], float] = {}


def measure_matmul_flops(device: str, dtype: str, n: int = 2048, seconds: float = 0.5) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of a device we have no table for."""
    import torch

    dt = torch_dtype(dtype)
    a = torch.full((n, n), 0.5, device=device, dtype=dt)  # not randn: the global RNG must stay untouched
    b = torch.full((n, n), 0.25, device=device, dtype=dt)
    for _ in range(2):
        a @ b
    synchronize(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        synchronize(device)
    return 2 * n**3 * count / (time.perf_counter() - t0)


def device_peak_flops(device: str, dtype: str) -> float:
    """The peak FLOP/s that MFU is measured against: a data-sheet figure for known GPUs in
    bf16/fp16, otherwise a measured large matmul (cached per process)."""
    import torch

    if device.startswith("cuda") and dtype != "float32":
        name = torch.cuda.get_device_name(torch.device(device))
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                return flops
    key = (device, dtype)
    if key not in _measured_peaks:
        _measured_peaks[key] = measure_matmul_flops(device, dtype)
    return _measured_peaks[key]


def keep_freed_memory_for_reuse() -> bool:
    """Stop glibc from handing freed heap memory back to the OS between training steps.

    A CPU training step frees and reallocates the same activations every iteration. glibc trims
    the top of its heap back to the OS once more than twice the largest mmap'd block freed so far
    sits free there (128 KB at start), so unless something large happened to be freed earlier,
    every step page-faults its memory in again. Keeping up to 1 GB of freed heap, and mmap'ing only blocks of
    32 MB or more, makes that independent of history; the peak RSS stays the same, since the next
    step reuses what this one freed. Figures in BENCHMARKS.md. Returns whether it applied (glibc
    only; elsewhere nothing changes)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device.startswith("mps"):
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# tokenizers: each one is rebuilt from a small JSON-able spec stored in meta.json and checkpoints


class CharTokenizer:
    """One token per Unicode character of a fixed vocabulary."""

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.vocab_size = len(chars)
        self.spec = {"kind": "char", "chars": chars}
        self.eot_token: Optional[int] = None

    def encode(self, text: str) -> list[int]:
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20])
            raise UserError(f"the text has characters outside this model's vocabulary: {shown}; remove or replace them")
        return [self.stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class TiktokenTokenizer:
    """OpenAI's GPT-2 BPE through tiktoken (offline with TIKTOKEN_CACHE_DIR)."""

    def __init__(self, name: str = "gpt2"):
        import tiktoken

        try:
            self.enc = tiktoken.get_encoding(name)
        except Exception as e:  # tiktoken fetches its files on first use
            raise UserError(f"could not load the tiktoken encoding '{name}' ({type(e).__name__}); offline, point TIKTOKEN_CACHE_DIR at a folder holding its files") from None
        self.vocab_size = self.enc.n_vocab
        self.eot_token = self.enc.eot_token
        self.spec = {"kind": "tiktoken", "name": name}

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


class HFTokenizer:
    """A Hugging Face `tokenizers` BPE (the Kazakh byte-level BPE), carried as its tokenizer.json text."""

    def __init__(self, tokenizer_json: str):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.vocab_size = self.tok.get_vocab_size()
        self.eot_token = self.tok.token_to_id("<|endoftext|>")
        self.spec = {"kind": "hf", "tokenizer_json": tokenizer_json}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


def tokenizer_from_spec(spec: dict):
    kind = spec.get("kind")
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "tiktoken":
        return TiktokenTokenizer(spec["name"])
    if kind == "hf":
        return HFTokenizer(spec["tokenizer_json"])
    raise UserError(f"unknown tokenizer kind '{kind}' (expected char, tiktoken or hf)")


# -----------------------------------------------------------------------------
# KazQAD: reading a source and laying it out as training text

KAZQAD_HUB_ID = ("issai/kazqad", "kazqad")
NQ_TRANSLATE_HUB_ID = ("issai/kazqad", "nq-translate-kk")  # ~61k machine-translated triples, same schema
KAZQAD_SOURCE_ENV = "KAZQAD_SOURCE"
KAZQAD_FIELDS = ("title", "context", "question", "answers")
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def format_qa(question: str, answer: str = "") -> str:
    """One question line of the layout. A prompt is format_qa(question) = 'question:'."""
    return f"{question}:" + (f" {answer}\n" if answer else "")


def kazqad_passages(examples: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    """Examples grouped by passage (title, context), NFC-normalized, in order of first appearance."""
    passages: dict[tuple[str, str], list[dict]] = {}
    for ex in examples:
        key = (nfc(ex.get("title") or "").strip(), nfc(ex["context"]).strip())
        passages.setdefault(key, []).append(ex)
    return passages


def passage_document(title: str, context: str, examples: list[dict]) -> str:
    """One document of the training layout:

        <title>
        <passage>
        <question 1>: <answer 1>
        <question 2>: <answer 2>

    A passage shared by several examples is written once, followed by all its questions, so that
    a prompt '<question>:' leads the model into ' <answer>' and a newline ends the answer.
    """
    qas = []
    for ex in examples:
        answers = ex["answers"]["text"]
        qas.append(format_qa(clean_question(ex["question"]), (nfc(answers[0]).strip() if answers else "") or "-"))
    return passage_header(title, context) + "".join(qas)


def passage_header(title: str, context: str) -> str:
    """'<title>\\n<passage>\\n': what precedes a passage's questions (and a reading-comprehension prompt)."""
    return (f"{title}\n" if title else "") + f"{context}\n"


def clean_question(question: str) -> str:
    return " ".join(nfc(question).split())


def kazqad_documents(examples: Iterable[dict]) -> list[str]:
    """The training text of KazQAD examples: one document per distinct passage (passage_document)."""
    return [passage_document(t, c, exs) for (t, c), exs in kazqad_passages(examples).items()]


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): convert it to UTF-8 first") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(_read_text_file(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {n} is not JSON ({e.msg}): expected KazQAD JSON Lines") from None
        missing = [k for k in ("context", "question", "answers") if not isinstance(row, dict) or k not in row]
        if missing or not isinstance(row["answers"], dict) or "text" not in row["answers"]:
            what = f"missing {', '.join(missing)}" if missing else "'answers' has no 'text' list"
            raise UserError(f"{path} line {n} is not in KazQAD's schema ({what}); expected fields {', '.join(KAZQAD_FIELDS)}")
        rows.append(row)
    return rows


def split_of(path: Path) -> str:
    """The split a KazQAD file belongs to, from its name ('...-validation.jsonl' -> validation)."""
    words = path.stem.lower().replace("_", "-").replace(".", "-").split("-")
    for word in reversed(words):
        if word in SPLIT_NAMES:
            return SPLIT_NAMES[word]
    return "train"


def read_kazqad_examples(source: Optional[str], hub_id: tuple[str, str] = KAZQAD_HUB_ID) -> dict[str, list[dict]]:
    """KazQAD examples by split, from the hub or from a local JSON Lines file or folder."""
    if source is None:
        return _download_kazqad(hub_id)
    path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"--source {source} does not exist: pass a KazQAD JSON Lines file or folder, or a .txt file")
    files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path} holds no .jsonl files: pass a folder of KazQAD JSON Lines files")
    splits: dict[str, list[dict]] = {}
    for f in files:
        splits.setdefault(split_of(f), []).extend(_read_jsonl(f))
    if not any(splits.values()):
        raise UserError(f"{source} holds no examples")
    return splits


def _download_kazqad(hub_id: tuple[str, str]) -> dict[str, list[dict]]:
    try:
        from datasets import load_dataset

        ds = load_dataset(*hub_id)
    except Exception as e:
        flag = "--source=PATH" if hub_id == KAZQAD_HUB_ID else "--nq_source=PATH"
        raise UserError(f"could not load {'/'.join(hub_id)} from the Hugging Face hub ({type(e).__name__}); "
                        f"offline, pass a local copy: {flag} (KazQAD JSON Lines file or folder{', or a .txt file' if hub_id == KAZQAD_HUB_ID else ''})"
                        + (f" or set {KAZQAD_SOURCE_ENV}=PATH" if hub_id == KAZQAD_HUB_ID else "")) from None
    return {SPLIT_NAMES.get(name, name): list(split) for name, split in ds.items()}


def split_documents(docs: list[str], val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """A deterministic split by whole documents: the documents with the smallest content hashes
    go to val, so the split does not depend on file order and never cuts a document."""
    if len(docs) < 2:
        raise UserError(f"the source has {len(docs)} document(s); at least 2 are needed to split train from val (separate documents by a blank line)")
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha1(docs[i].encode()).digest())
    val_ids = set(ranked[: max(1, round(val_fraction * len(docs)))])
    return [d for i, d in enumerate(docs) if i not in val_ids], [d for i, d in enumerate(docs) if i in val_ids]


def load_kazqad_text(source: Optional[str], nq_translate: bool = False, nq_source: Optional[str] = None) -> tuple[list[str], list[str], str]:
    """Train and val documents from any supported source, and a line describing how they were split.

    KazQAD with a train and a validation split: those splits (so val questions are never trained
    on; the test split is left out for evaluation). One split only, or a plain .txt corpus
    (documents separated by blank lines): a 90/10 split by document. With nq_translate, the
    nq-translate-kk subset (hub, or nq_source) is added to the training documents only."""
    train, val, how = _load_main_text(source)
    if nq_translate or nq_source:
        extra = read_kazqad_examples(nq_source, NQ_TRANSLATE_HUB_ID)
        extra_docs = kazqad_documents(ex for rows in extra.values() for ex in rows)
        train = train + extra_docs
        how += f"; nq-translate-kk: {len(extra_docs)} passages added to train"
    return train, val, how


def _load_main_text(source: Optional[str]) -> tuple[list[str], list[str], str]:
    source = source if source is not None else (os.environ.get(KAZQAD_SOURCE_ENV) or None)
    if source is not None and Path(source).suffix == ".txt" and Path(source).is_file():
        text = nfc(_read_text_file(Path(source)))
        docs = [d.strip() + "\n" for d in text.replace("\r\n", "\n").split("\n\n") if d.strip()]
        train, val = split_documents(docs)
        return train, val, f"{source}: {len(docs)} documents, split 90/10 by document"
    splits = read_kazqad_examples(source)
    if splits.get("train") and splits.get("validation"):
        train, val = kazqad_documents(splits["train"]), kazqad_documents(splits["validation"])
        return train, val, f"KazQAD train split -> train ({len(train)} passages), validation split -> val ({len(val)} passages)"
    examples = [ex for name in sorted(splits) for ex in splits[name]]
    train, val = split_documents(kazqad_documents(examples))
    return train, val, f"KazQAD {'+'.join(sorted(splits))}: {len(train) + len(val)} passages, split 90/10 by passage"


def kazqad_arg_parser(doc: str):
    """The options every KazQAD prepare script takes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None, help=f"KazQAD JSON Lines file or folder, or a .txt corpus (default: ${KAZQAD_SOURCE_ENV}, else the hub)")
    parser.add_argument("--nq_translate", action="store_true", help="add the nq-translate-kk subset (~61k translated triples) to the training split")
    parser.add_argument("--nq_source", default=None, help="a local copy of nq-translate-kk (JSON Lines file or folder); implies --nq_translate")
    parser.add_argument("--out_dir", default=None, help="where to write the files (default: the script's folder)")
    return parser


def encode_documents(docs: list[str], tokenizer, desc: str) -> tuple[list[int], int]:
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


def write_kazqad_dataset(out_dir: Path, train_docs: list[str], val_docs: list[str], tokenizer) -> None:
    """Encode and write a KazQAD dataset, and report its size and characters per token."""
    train_ids, _ = encode_documents(train_docs, tokenizer, "train")
    val_ids, val_bytes = encode_documents(val_docs, tokenizer, "val")
    write_dataset(out_dir, train_ids, val_ids, tokenizer, val_bytes)
    val_chars = sum(len(d) for d in val_docs)
    print(f"{len(train_ids):,} train and {len(val_ids):,} val tokens, vocabulary of {tokenizer.vocab_size}, "
          f"{val_chars / len(val_ids):.2f} characters per token on val: wrote {out_dir}/train.bin, val.bin, meta.json")


# -----------------------------------------------------------------------------
# prepared datasets: data/<name>/{train.bin,val.bin,meta.json}


UINT16_VOCAB = 65536  # token ids 0..65535


def prepare_out_dir(path: Optional[str], script: str) -> Path:
    """The folder a prepare script writes to (default: the script's own folder), created if needed."""
    out = Path(path) if path else Path(script).resolve().parent
    if out.exists() and not out.is_dir():
        raise UserError(f"--out_dir {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_dataset(out_dir: Path, train_ids, val_ids, tokenizer, val_text_bytes: int) -> None:
    """Write uint16 train.bin/val.bin and their meta.json."""
    import numpy as np

    if tokenizer.vocab_size > UINT16_VOCAB:
        raise UserError(f"vocabulary of {tokenizer.vocab_size} does not fit uint16 token files (at most {UINT16_VOCAB})")
    counts = {}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        arr = np.asarray(ids, dtype=np.uint16)
        arr.tofile(out_dir / f"{split}.bin")
        counts[split] = len(arr)
    write_meta(out_dir, tokenizer.spec, tokenizer.vocab_size, counts, val_text_bytes)


def write_meta(out_dir: Path, tokenizer_spec: dict, vocab_size: int, counts: dict[str, int], val_text_bytes: int) -> None:
    """meta.json: the tokenizer, the token counts (checked against the .bin files when training)
    and the val text's UTF-8 bytes (for bits per byte)."""
    meta = {"vocab_size": vocab_size, "tokenizer": tokenizer_spec, "train_tokens": counts["train"],
            "val_tokens": counts["val"], "val_bytes": val_text_bytes}
    (out_dir / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")


def load_dataset_meta(data_dir: Path, block_size: int) -> dict:
    """meta.json of a prepared dataset, checked against its .bin files; the tokenizer spec is
    made self-contained (a tokenizer file beside the .bin files is read into it)."""
    name = data_dir.name
    prepare = f"python data/{name}/prepare.py"
    meta_path = data_dir / "meta.json"
    for f in ("train.bin", "val.bin"):
        if not (data_dir / f).exists():
            raise UserError(f"dataset '{name}' is not prepared ({data_dir / f} is missing): run {prepare}")
    if not meta_path.exists():
        raise UserError(f"{meta_path} is missing: run {prepare} again")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        spec = meta["tokenizer"]
        vocab_size = int(meta["vocab_size"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{meta_path} is unreadable ({type(e).__name__}: {e}): run {prepare} again") from None
    if spec.get("kind") == "hf" and "file" in spec:
        tok_path = data_dir / spec["file"]
        if not tok_path.exists():
            raise UserError(f"{tok_path} is missing: run {prepare} again")
        meta["tokenizer"] = {"kind": "hf", "tokenizer_json": tok_path.read_text(encoding="utf-8")}
    try:
        tokenizer_size = tokenizer_from_spec(meta["tokenizer"]).vocab_size
    except UserError:
        raise
    except Exception as e:  # a damaged spec: missing fields, bad tokenizer.json
        raise UserError(f"the tokenizer of {meta_path} cannot be loaded ({type(e).__name__}): run {prepare} again") from None
    if tokenizer_size != vocab_size:
        raise UserError(f"the tokenizer has {tokenizer_size} entries but {meta_path} says {vocab_size}: they come from different runs; run {prepare} again")
    for split in ("train", "val"):
        size = (data_dir / f"{split}.bin").stat().st_size
        if size % 2:
            raise UserError(f"{data_dir / f'{split}.bin'} has an odd byte count ({size}): it is truncated; run {prepare} again")
        tokens = size // 2
        if f"{split}_tokens" in meta and meta[f"{split}_tokens"] != tokens:
            raise UserError(f"{data_dir / f'{split}.bin'} holds {tokens} tokens but meta.json says {meta[f'{split}_tokens']}: they come from different runs; run {prepare} again")
        if tokens < block_size + 1:
            raise UserError(f"{data_dir / f'{split}.bin'} holds {tokens} tokens, fewer than block_size+1 = {block_size + 1}: use a smaller --block_size or more data")
    meta["vocab_size"] = vocab_size
    return meta


def bits_per_byte(loss_nats: float, tokens: int, text_bytes: int) -> float:
    """Loss per token (nats) turned into bits per UTF-8 byte, comparable across tokenizers."""
    return loss_nats * tokens / text_bytes / math.log(2)


# -----------------------------------------------------------------------------
# checkpoints

CHECKPOINT_VERSION = 1


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, flushed and fsync'ed, then renamed
    over the old one. A crash at any moment leaves either the old or the new checkpoint."""
    import torch

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is untouched: free disk space or choose another --out_dir") from None


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """Load a checkpoint with weights_only=True; a damaged or foreign file is a one-line error."""
    import torch

    if not path.exists():
        raise UserError(f"no checkpoint at {path}: train one first (init_from=scratch), or point --out_dir at a folder holding ckpt.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated, or holds objects that weights-only loading refuses ({type(e).__name__}); use another checkpoint or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"checkpoint {path} has format version {found!r}, this code reads version {CHECKPOINT_VERSION}; retrain or use a matching version of this repo")
    return ckpt


def find_checkpoint(out_dir: Path, prefer: str = "ckpt.pt") -> Path:
    """The checkpoint to load from out_dir: `prefer` if present, else the other of ckpt.pt/best.pt."""
    for name in (prefer, "ckpt.pt", "best.pt"):
        if (out_dir / name).exists():
            return out_dir / name
    return out_dir / prefer
