"""Checkpoints, and the models that runs start from.

A checkpoint is a dict saved with torch.save (atomically: a kill at any moment leaves a loadable
one) and read back with weights_only=True (no pickled objects): the model and optimizer states,
model arguments, tokenizer spec, iteration, config and every rank's RNG state. load_checkpoint
checks it once, where it is read, so that everything after may trust its fields.

A run starts from (init_from): scratch (train.py builds the model), 'resume' (the newest checkpoint
of out_dir), an earlier run of this repo to finetune (its folder or a checkpoint file: weights only),
or a transformers model: OpenAI's GPT-2 by name, a folder (export_hf.py's exports among them) or a
hub name 'owner/model', GPT-2 or Persimmon (kazgpt/hf.py).
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kazgpt.cli import UserError, offline_hint, print0
from kazgpt.files import atomic_write
from kazgpt.hf import GPT2_NAMES, load_transformers
from kazgpt.tokenizer import Tokenizer, tokenizer_from_spec
from model import GPT, GPTConfig

CHECKPOINT_VERSION = 2  # 2: QK-norm is a LayerNorm per head (version 1's was an RMS norm)
CHECKPOINT_NAMES = ("ckpt.pt", "best.pt")  # the latest state, and the one with the lowest val loss
REQUIRED = {"model": dict, "model_args": dict, "tokenizer": dict, "iter_num": int, "best_val_loss": (int, float)}


def save_checkpoint(obj: dict, path: Path) -> None:
    try:
        with atomic_write(path) as f:
            torch.save({"version": CHECKPOINT_VERSION, **obj}, f)
    except RuntimeError as e:  # how torch's writer reports a write that failed, a full disk among them
        raise UserError(f"could not write {path} ({str(e).strip()[:80]}): is the disk full? The checkpoints "
                        f"{path.parent} held before are kept") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint of this repo, checked: a damaged, foreign or incomplete file is a one-line error."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint {path} is damaged or not a checkpoint of this repo ({type(e).__name__}): "
                        "use another checkpoint (ckpt.pt or best.pt), or retrain") from None
    version = ckpt.get("version") if isinstance(ckpt, dict) else None
    if version == 1 and (ckpt.get("model_args") or {}).get("qk_norm"):  # without QK-norm, version 1 is version 2
        raise UserError(f"checkpoint {path} has the RMS QK-norm of this repo before its models exported to "
                        "transformers (now a LayerNorm): retrain it, or sample it with commit 234ec61")
    problem = None
    if version not in (1, CHECKPOINT_VERSION):
        problem = "has no version this code reads"
    else:
        problem = next((f"lacks its '{k}'" for k, kind in REQUIRED.items() if not isinstance(ckpt.get(k), kind)), None)
    if problem:
        raise UserError(f"checkpoint {path} {problem}: it is damaged or from another program; use another "
                        "checkpoint, or retrain")
    return ckpt


def newest_checkpoint(folder: Path, prefer: Optional[str] = None) -> Path:
    """`prefer` if folder has it, else the most recently written of ckpt.pt and best.pt."""
    if prefer and (folder / prefer).is_file():
        return folder / prefer
    found = [folder / n for n in CHECKPOINT_NAMES if (folder / n).is_file()]
    if not found:
        raise UserError(f"no checkpoint in {folder}: train one first (init_from=scratch), or point --out_dir at "
                        "a run's folder")
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def model_from_checkpoint(ckpt: dict, path: Optional[Path] = None, **overrides) -> GPT:
    """The GPT a checkpoint holds (overrides such as dropout replace its model arguments)."""
    try:
        model = GPT(GPTConfig(**{**ckpt["model_args"], **overrides}))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:  # arguments or weights of another shape
        first_line = str(e).strip().splitlines()[0][:160]
        raise UserError(f"the model in {path or 'the checkpoint'} does not load ({first_line}): it is damaged or "
                        "from another version of this repo") from None
    return model


def load_pretrained(name_or_path: str, dropout: float = 0.0) -> tuple[GPT, dict]:
    """A transformers GPT-2 or Persimmon (GPT-2 by name, a folder, or a hub name) as this repo's GPT,
    with its tokenizer's spec."""
    if Path(name_or_path).is_dir() and not (Path(name_or_path) / "config.json").is_file():
        raise UserError(f"{name_or_path} holds neither a run of this repo (ckpt.pt, best.pt) nor a transformers model "
                        "(config.json): point init_from at one, e.g. a folder written by export_hf.py")
    try:
        return load_transformers(name_or_path, dropout)
    except ValueError as e:  # loaded, but not a model this GPT can hold
        raise UserError(f"'{name_or_path}' cannot be used: {e}") from None
    except Exception as e:  # the hub cannot be reached, or the folder holds no transformers model
        raise UserError(f"could not load '{name_or_path}' ({type(e).__name__}): name one of {', '.join(GPT2_NAMES)}, "
                        f"a folder saved by transformers (GPT-2 or Persimmon) or export_hf.py, or a hub model "
                        f"'owner/name'; offline, {offline_hint()}pass a folder") from None


def is_hub_name(init_from: str) -> bool:
    return init_from in GPT2_NAMES or bool(re.fullmatch(r"[\w.-]+/[\w.-]+", init_from))


def run_folder_or_file(init_from: str) -> Optional[Path]:
    """The checkpoint of this repo that init_from names (a file, or a run's folder), else None."""
    path = Path(init_from).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and any((path / n).is_file() for n in CHECKPOINT_NAMES):
        return newest_checkpoint(path, prefer="best.pt")
    return None


def start_model(init_from: str, out_dir: Path, tokenizer: dict, vocab_size: int,
                dropout: float) -> tuple[GPT, Optional[dict]]:
    """The model a run that does not start from scratch starts from, and its checkpoint (None for
    transformers weights). The weights must speak the dataset's tokenizer (spec and vocabulary size)."""
    path = newest_checkpoint(out_dir) if init_from == "resume" else run_folder_or_file(init_from)
    if path is None:
        if not (Path(init_from).is_dir() or is_hub_name(init_from)):
            raise UserError(f"init_from must be scratch, resume, a run of this repo (its folder or checkpoint file), "
                            f"or a transformers model ({', '.join(GPT2_NAMES)}, a folder, or 'owner/name' on the "
                            f"hub); got '{init_from}'")
        print0(f"initializing from transformers weights: {init_from}")
        model, spec = load_pretrained(init_from, dropout)
        own_tokenizer = spec["kind"] != "tiktoken"  # an export's, or a tokenizer.json: it must be the dataset's
        if (own_tokenizer and spec != tokenizer) or model.config.vocab_size < vocab_size:
            raise UserError(f"'{init_from}' speaks another tokenizer than this dataset ({model.config.vocab_size} "
                            f"tokens, the dataset {vocab_size}): finetune it on a dataset of its tokenizer (GPT-2's "
                            "BPE: qazdata; an export: the dataset its run was trained on)")
        return model, None
    ckpt = load_checkpoint(path)
    print0(f"{'resuming from' if init_from == 'resume' else 'initializing from'} {path} at iteration "
           f"{ckpt['iter_num']}")
    if ckpt["tokenizer"] != tokenizer:
        raise UserError(f"{path} was trained with another tokenizer than this dataset's: use the dataset it was "
                        "trained on, or prepare one with its tokenizer (e.g. data/qazdata_qa/prepare.py "
                        "--tokenizer=<the dataset folder it was trained on>)")
    return model_from_checkpoint(ckpt, path, dropout=dropout), ckpt


def load_model(init_from: str, out_dir: str, checkpoint: str, device: str) -> tuple[GPT, Tokenizer]:
    """The model to sample from (eval mode, on device) and its tokenizer: a run's checkpoint
    (init_from='resume': out_dir's `checkpoint`, else its newest), or a transformers model."""
    if init_from == "resume":
        path = newest_checkpoint(Path(out_dir), prefer=checkpoint)
        ckpt = load_checkpoint(path)
        model, tokenizer = model_from_checkpoint(ckpt, path), tokenizer_from_spec(ckpt["tokenizer"])
    else:
        model, spec = load_pretrained(init_from)
        tokenizer = tokenizer_from_spec(spec)
    return model.eval().to(device), tokenizer


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
