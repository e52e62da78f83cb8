"""Checkpoint files and the models loaded from them.

A checkpoint is a dict saved with torch.save and read back with weights_only=True (no pickled
objects): the model and optimizer states, model arguments, tokenizer spec, iteration, config and
every rank's RNG state. It is written atomically, so a crash at any moment leaves a loadable one.
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kazgpt.cli import UserError, hub_cache_hint, hub_warnings_held_back
from kazgpt.files import commit, remove_stale_temporaries, temporary_name
from kazgpt.tokenizer import Tokenizer, TiktokenTokenizer, tokenizer_from_spec
from model import GPT, GPTConfig

CHECKPOINT_VERSION = 1
CHECKPOINT_NAMES = ("ckpt.pt", "best.pt")  # the latest state, and the one with the lowest val loss
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def remove_stale_checkpoint_temporaries(folder: Path) -> None:
    """Delete the temporary checkpoint files a run killed while saving left in folder (only those)."""
    remove_stale_temporaries(folder, CHECKPOINT_NAMES)


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, flushed and fsync'ed, then renamed
    over the old one. A crash at any moment leaves either the old or the new checkpoint."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        commit({tmp: path})
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"could not write checkpoint {path} ({e.strerror or e}); the previous checkpoint is untouched: "
                        "free disk space or choose another --out_dir") from None


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict:
    """Load a checkpoint with weights_only=True; a damaged or foreign file is a one-line error."""
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: train one first (init_from=scratch), "
                        "or point --out_dir at a folder holding ckpt.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated, or holds objects that weights-only loading "
                        f"refuses ({type(e).__name__}); use another checkpoint or retrain") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        found = ckpt.get("version") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"checkpoint {path} has format version {found!r}, this code reads version "
                        f"{CHECKPOINT_VERSION}; retrain or use a matching version of this repo")
    return ckpt


def find_checkpoint(out_dir: Path, prefer: str = "ckpt.pt") -> Path:
    """The checkpoint to load from out_dir: `prefer` if present, else the other of ckpt.pt/best.pt."""
    for name in (prefer, *CHECKPOINT_NAMES):
        if (out_dir / name).exists():
            return out_dir / name
    return out_dir / prefer


def model_from_checkpoint(ckpt: dict, **overrides) -> GPT:
    """The GPT a checkpoint holds (overrides such as dropout replace its model arguments)."""
    try:
        model = GPT(GPTConfig(**{**ckpt["model_args"], **overrides}))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # missing fields, other shapes or keys
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the checkpoint's model does not load ({first_line[:200]}): it is damaged or comes from "
                        "another version of this repo") from None
    return model


def run_checkpoint(init_from: str) -> Optional[Path]:
    """The checkpoint of this repo that init_from names: a checkpoint file, or a run's out_dir (its
    best.pt, else its ckpt.pt); None if it names none."""
    path = Path(init_from).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and any((path / name).exists() for name in CHECKPOINT_NAMES):
        return find_checkpoint(path, "best.pt")
    return None


def is_pretrained_name(init_from: str) -> bool:
    """Whether init_from names GPT-2 weights: an OpenAI model name or a local transformers folder."""
    return init_from in GPT2_NAMES or (Path(init_from).is_dir() and run_checkpoint(init_from) is None)


def load_pretrained(name_or_path: str, dropout: float = 0.0) -> GPT:
    """OpenAI's GPT-2 (hub name) or a local transformers GPT-2 folder, as this repo's GPT."""
    try:
        with hub_warnings_held_back():
            return GPT.from_pretrained(name_or_path, dropout=dropout)
    except ValueError as e:  # loaded, but not a GPT-2 this model can hold
        raise UserError(f"'{name_or_path}' cannot be used: {e}") from None
    except Exception as e:  # the hub cannot be reached, or the folder holds no transformers model
        where = "folder" if Path(name_or_path).exists() else "model"
        cache = "" if where == "folder" else hub_cache_hint()
        raise UserError(f"could not load the GPT-2 {where} '{name_or_path}' ({type(e).__name__}); offline, {cache}"
                        "pass a local folder saved by transformers' GPT2LMHeadModel.save_pretrained") from None


def load_model(init_from: str, out_dir: str, checkpoint: str, device: str) -> tuple[GPT, Tokenizer]:
    """The model to sample from (eval mode, on device) and its tokenizer: the checkpoint in out_dir
    (init_from='resume'), or GPT-2 weights (a hub name, or a local folder with its tokenizer.json)."""
    if init_from == "resume":
        ckpt = load_checkpoint(find_checkpoint(Path(out_dir), checkpoint))
        model, tokenizer = model_from_checkpoint(ckpt), tokenizer_from_spec(ckpt["tokenizer"])
    elif is_pretrained_name(init_from):
        model = load_pretrained(init_from)
        tok_file = Path(init_from) / "tokenizer.json"
        tokenizer = (tokenizer_from_spec({"kind": "hf", "tokenizer_json": tok_file.read_text(encoding="utf-8")})
                     if tok_file.exists() else TiktokenTokenizer("gpt2"))
    else:
        raise UserError(f"init_from must be resume, {', '.join(GPT2_NAMES)} or a local GPT-2 folder; got '{init_from}'")
    model.eval().to(device)
    return model, tokenizer


def rng_state() -> dict:
    """This process's Python, NumPy, torch and CUDA RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])
