"""
Train a GPT. One process on one device:

    python train.py config/train_qazdata_char.py --device=cpu --compile=False

DDP on one node with 8 GPUs:

    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

DDP on 2 nodes (run on each, with node_rank 0 and 1; master_addr is node 0's address):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 \\
        train.py config/train_gpt2.py

(without Infiniband, prefix the command with NCCL_IB_DISABLE=1)

Settings are the TrainConfig fields below, overridden by config files and --key=value flags
(see configurator.py). The checkpoint in out_dir holds everything needed to continue exactly
where a run stopped (init_from=resume), and everything sample.py needs (model and tokenizer).

The loop reads the loss back from the device only every log_interval steps (and at evals), so a
GPU never waits for the host in between; the NaN check and, under DDP, the agreement to stop on
a signal happen at those points.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Optional

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from kazgpt.checkpoint import (GPT2_NAMES, find_checkpoint, is_pretrained_name, load_checkpoint, load_pretrained,
                               model_from_checkpoint, remove_stale_checkpoint_temporaries, rng_state, run_checkpoint,
                               save_checkpoint, set_rng_state)
from kazgpt.cli import UserError, check_seed, closest, is_rank0, print0, run_main, shown
from kazgpt.dataset import (REPO_ROOT, batch_generator, bits_per_byte, get_batch, load_dataset_meta, open_token_files,
                            training_batches)
from kazgpt.device import (DTYPES, autocast_context, device_peak_flops, keep_freed_memory_for_reuse, resolve_device,
                           resolve_dtype, resumed_dtype)
from kazgpt.files import SetAside, put_back_interrupted_replacement
from kazgpt.optim import (LR_SCHEDULES, OPTIMIZERS, build_optimizers, check_loaded_state, lr_multiplier,
                          newton_schulz_dtype, set_lr, step_optimizers)
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1  # a log line, and the only read-back of the loss from the device, every N steps
    eval_iters: int = 200
    eval_only: bool = False  # evaluate once and exit
    keep_checkpoints: str = "both"  # 'latest' (ckpt.pt at every eval), 'best' (best.pt, lowest val loss) or 'both'
    overwrite: bool = False  # replace a run in out_dir (its files go at this run's first checkpoint); else refused
    # 'scratch', 'resume' (from out_dir), 'gpt2*', a local Hugging Face GPT-2 folder, or an earlier run of this
    # repo to finetune (its out_dir or a checkpoint file; the weights only, with a new optimizer state)
    init_from: str = "scratch"
    # wandb logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"  # a folder under data/ prepared by its prepare.py
    data_dir: Optional[str] = None  # where the dataset's files are; None: data/<dataset>
    gradient_accumulation_steps: int = 5 * 8  # micro-steps per optimizer step, over all processes
    batch_size: int = 12  # micro-batch size per process
    block_size: int = 1024
    pack_examples: bool = True  # QA datasets: a window runs on into the examples after its first one (else padding)
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0  # the MLP's hidden width over n_embd (GPT-2's: 4)
    dropout: float = 0.0  # 0 for pretraining, 0.1+ for finetuning
    bias: bool = False  # biases in Linear and LayerNorm layers
    # from scratch, three choices newer than GPT-2 (a model started from weights keeps the weights' own):
    position_encoding: str = "rope"  # 'rope' (rotary) or 'learned' (GPT-2's position embeddings)
    mlp_activation: str = "relu2"  # 'relu2' (ReLU squared) or 'gelu' (GPT-2's)
    qk_norm: bool = True  # RMS-normalize each head's queries and keys
    # optimizer: 'muon' (Muon for the blocks' matrices, AdamW for the rest) or 'adamw' (AdamW for all);
    # None: muon from scratch, adamw from GPT-2 weights, else the optimizer the checkpoint was made with
    optimizer: Optional[str] = None
    learning_rate: float = 6e-4  # AdamW's
    max_iters: int = 600000
    weight_decay: float = 1e-1  # AdamW's, on matrices and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # learning rate schedule: linear warmup, then decay to min_lr along lr_schedule ('cosine' or 'wsd')
    decay_lr: bool = True
    lr_schedule: str = "cosine"
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000  # ~max_iters per the Chinchilla paper
    min_lr: float = 6e-5  # ~learning_rate/10 per the Chinchilla paper
    # system
    backend: str = "nccl"  # DDP backend on CUDA; CPU runs use gloo
    device: Optional[str] = None  # None: cuda, then mps, then cpu
    dtype: Optional[str] = None  # None: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with fast bf16; else fp32
    compile: Optional[bool] = None  # None: compile on CUDA, where it pays; eager on CPU and MPS
    seed: int = 1337


RETIRED_KEYS = {"always_save_checkpoint": "use keep_checkpoints: 'latest' (ckpt.pt at every eval), 'best' or 'both'"}


def check_ranges(cfg: TrainConfig) -> None:
    positive = ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "log_interval",
                "eval_iters", "n_layer", "n_head", "n_embd")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    check_seed(cfg.seed)
    for key in ("max_iters", "warmup_iters", "lr_decay_iters"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must be 0 or more, got {getattr(cfg, key)}")
    if not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise UserError(f"grad_clip must be 0 (no clipping) or more, got {cfg.grad_clip}")
    for key in ("learning_rate", "min_lr"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and 0 <= value < 10) or (key == "learning_rate" and value == 0):
            raise UserError(f"{key} must be a positive number below 10, got {value}")
    if not (math.isfinite(cfg.mlp_ratio) and cfg.mlp_ratio > 0):
        raise UserError(f"mlp_ratio must be a positive number (the MLP's width over n_embd), got {cfg.mlp_ratio}")
    if not (math.isfinite(cfg.muon_lr) and 0 < cfg.muon_lr < 10):
        raise UserError(f"muon_lr must be a positive number below 10, got {cfg.muon_lr}")
    for key in ("dropout", "beta1", "beta2", "muon_momentum"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"{key} must be in [0, 1), got {getattr(cfg, key)}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise UserError(f"weight_decay must be 0 or more, got {cfg.weight_decay}")
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be {' or '.join(OPTIMIZERS)} (or None for the default), got '{cfg.optimizer}'")
    if not cfg.out_dir.strip():
        raise UserError("out_dir is empty: name a folder for the checkpoints, e.g. --out_dir=out")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise UserError(f"lr_schedule must be {' or '.join(LR_SCHEDULES)}, got '{cfg.lr_schedule}'")
    if cfg.keep_checkpoints not in ("latest", "best", "both"):
        raise UserError(f"keep_checkpoints must be 'latest', 'best' or 'both', got '{cfg.keep_checkpoints}'")
    if cfg.init_from == "scratch":  # its shape checked now, before the out_dir; the vocabulary comes with the data
        scratch_model_config(cfg, vocab_size=1)
    source = run_checkpoint(cfg.init_from) if cfg.init_from not in ("scratch", "resume") else None
    if source is not None and source.resolve().parent == Path(cfg.out_dir).resolve():
        raise UserError(f"init_from {cfg.init_from} is in out_dir {cfg.out_dir}: finetune into a new --out_dir, or "
                        "continue that run with --init_from=resume")


# -----------------------------------------------------------------------------
# processes, devices, output folder


@dataclass
class Processes:
    """This process's place in the run: one process, or one rank of a torchrun DDP job."""
    ddp: bool
    rank: int
    local_rank: int
    world_size: int
    device: str

    @property
    def master(self) -> bool:
        return self.rank == 0


def torchrun_env() -> Optional[tuple[int, int, int]]:
    """(rank, local_rank, world_size) as torchrun sets them, or None in a plain run (no RANK, or -1)."""
    if os.environ.get("RANK", "-1").strip() == "-1":
        return None
    values = []
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        raw = os.environ.get(key)
        if raw is None:
            raise UserError(f"RANK is set but {key} is not: launch DDP with torchrun, which sets RANK, LOCAL_RANK "
                            "and WORLD_SIZE together (or unset RANK to run one process)")
        try:
            values.append(int(raw))
        except ValueError:
            raise UserError(f"{key}={raw!r} is not a whole number: launch DDP with torchrun, which sets it") from None
    rank, local_rank, world_size = values
    if not (0 <= rank < world_size and local_rank >= 0):
        raise UserError(f"RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world_size} do not describe a process "
                        "of a DDP job: launch it with torchrun")
    return rank, local_rank, world_size


def setup_processes(cfg: TrainConfig) -> Processes:
    env = torchrun_env()
    ddp = env is not None
    world_size = env[2] if ddp else 1
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({world_size}): it counts micro-steps over all of them")
    device = resolve_device(cfg.device)
    tune_device(device)
    if not ddp:
        return Processes(False, 0, 0, 1, device)
    rank, local_rank, _ = env
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    backend = cfg.backend if device.startswith("cuda") else "gloo"  # NCCL needs GPUs
    if backend != cfg.backend:
        print0(f"DDP on {device}: using the gloo backend instead of {cfg.backend}")
    try:
        dist.init_process_group(backend=backend)
    except (ValueError, RuntimeError) as e:  # e.g. MASTER_ADDR unset, or the master cannot be reached
        raise UserError(f"could not join the DDP job ({str(e).strip().splitlines()[0][:200]}): launch it with "
                        "torchrun, which sets MASTER_ADDR and MASTER_PORT") from None
    return Processes(True, rank, local_rank, world_size, device)


def tune_device(device: str) -> None:
    """Settings that make training faster on each kind of device and change no result that matters."""
    if device == "cpu":
        keep_freed_memory_for_reuse()
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def training_dtype(cfg: TrainConfig, procs: Processes) -> str:
    dtype = resolve_dtype(cfg.dtype, procs.device, training=True)
    if procs.ddp and procs.device == "cpu" and cfg.dtype is None:  # a timing picked it: all take rank 0's pick
        picked = [dtype]
        dist.broadcast_object_list(picked, src=0)
        dtype = picked[0]
    return dtype


def dtype_once_loaded(cfg: TrainConfig, picked: str, checkpoint: Optional[dict], device: str) -> str:
    """The dtype of the run once its checkpoint is read: a resumed run not given --dtype keeps its
    checkpoint's (resumed_dtype), and says so where this device cannot run that one."""
    if checkpoint is None or cfg.dtype is not None:
        return picked
    trained_in, dtype = checkpoint.get("dtype"), resumed_dtype(checkpoint.get("dtype"), picked, device)
    if trained_in in tuple(DTYPES) and trained_in != dtype:  # a damaged value: no note
        print0(f"note: the checkpoint was trained in {trained_in}, which {device} does not run: training in "
               f"{dtype} (per-step losses will not match an uninterrupted run)")
    return dtype


RUN_FILES = ("ckpt.pt", "best.pt", "log.jsonl")  # what a run writes into out_dir
LOCK_FILE = ".kazgpt-train.lock"


def claim_out_dir(out_dir: Path, resume: bool, overwrite: bool, create: bool):
    """Make out_dir this run's: it must be a writable folder that no other train.py is using (the
    returned open lock file holds it until this process ends), and one that holds no earlier run
    unless this run resumes it or was told to replace it (overwrite: RunLog sets the old run's files
    aside once everything else has started). An earlier run that a replacement killed before its
    first checkpoint had set aside is put back first. train.py calls it twice: first with create=False, before
    anything is loaded, which checks and locks an out_dir that exists (None if it does not); then,
    once the run is ready to start, with create=True, which makes a missing out_dir and locks it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {out_dir} is a file, not a folder: choose another --out_dir")
    if resume and not out_dir.exists():  # nothing to resume: create nothing either
        raise UserError(f"no checkpoint at {out_dir} (the folder does not exist): train one first "
                        "(init_from=scratch), or point --out_dir at a folder holding ckpt.pt")
    if not out_dir.exists() and not create:
        return None
    lock = _lock_out_dir(out_dir)
    if put_back_interrupted_replacement(out_dir, RUN_FILES, replaced_by=("ckpt.pt", "best.pt")):
        print0(f"put back the earlier run in {out_dir}: an --overwrite had set it aside and was stopped before "
               "its first checkpoint")
    earlier = [name for name in RUN_FILES if (out_dir / name).exists()]
    if earlier and not resume and not overwrite:
        resumable = "ckpt.pt" in earlier or "best.pt" in earlier
        hint = "continue it with --init_from=resume, " if resumable else "it has no checkpoint to resume; "
        raise UserError(f"out_dir {out_dir} already holds a run ({', '.join(earlier)}): {hint}"
                        "choose another --out_dir, or replace it with --overwrite")
    return lock


def _lock_out_dir(out_dir: Path):
    """out_dir (made if missing) locked for this process: the open lock file, or a UserError."""
    import fcntl

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = open(out_dir / LOCK_FILE, "a")
    except OSError as e:
        raise UserError(f"out_dir {out_dir} is not writable ({e.strerror}): choose another --out_dir") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"another train.py is writing to {out_dir}: wait for it to end, or choose another "
                        "--out_dir") from None
    return lock


# -----------------------------------------------------------------------------
# data and model


def dataset_dir(cfg: TrainConfig) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    data_dir = REPO_ROOT / "data" / cfg.dataset
    known = sorted(p.name for p in (REPO_ROOT / "data").iterdir() if (p / "prepare.py").is_file())
    if not cfg.dataset.strip() or "/" in cfg.dataset or not data_dir.is_dir():
        raise UserError(f"unknown dataset '{cfg.dataset}': no folder data/{cfg.dataset}{closest(cfg.dataset, known)}; "
                        f"the datasets are {', '.join(known)} (or give a folder with --data_dir)")
    return data_dir


def scratch_model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    """The shape of a model trained from scratch; one the model refuses is a UserError naming the keys."""
    padded_vocab = -(-vocab_size // 64) * 64  # a multiple of 64 makes the output matmul faster on GPUs
    try:
        return GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, bias=cfg.bias,
                         position_encoding=cfg.position_encoding, mlp_activation=cfg.mlp_activation,
                         qk_norm=cfg.qk_norm)
    except ValueError as e:
        raise UserError(f"{e}: change the model's settings (--n_layer, --n_head, --n_embd, --mlp_ratio, "
                        "--block_size, --position_encoding, --mlp_activation)") from None


def resumed_model(cfg: TrainConfig, meta: dict, out_dir: Path) -> tuple[GPT, dict]:
    ckpt_path = find_checkpoint(out_dir)
    checkpoint = load_checkpoint(ckpt_path)
    print0(f"resuming from {ckpt_path} at iteration {checkpoint['iter_num']}")
    vocab = checkpoint.get("model_args", {}).get("vocab_size", 0)
    if checkpoint.get("tokenizer") != meta["tokenizer"] or vocab < meta["vocab_size"]:
        raise UserError(f"checkpoint {ckpt_path} was trained with another vocabulary than dataset '{cfg.dataset}' "
                        f"({vocab} vs {meta['vocab_size']} tokens): resume with the dataset it was trained on")
    return model_from_checkpoint(checkpoint, dropout=cfg.dropout), checkpoint


def pretrained_model(cfg: TrainConfig, meta: dict) -> GPT:
    if not is_pretrained_name(cfg.init_from):
        raise UserError(f"init_from must be scratch, resume, {', '.join(GPT2_NAMES)}, a local GPT-2 folder, or a "
                        f"run of this repo to finetune (its out_dir or checkpoint file); got '{cfg.init_from}'")
    print0(f"initializing from OpenAI GPT-2 weights: {cfg.init_from}")
    model = load_pretrained(cfg.init_from, dropout=cfg.dropout)
    if model.config.vocab_size < meta["vocab_size"]:
        raise UserError(f"'{cfg.init_from}' has a vocabulary of {model.config.vocab_size} tokens but dataset "
                        f"'{cfg.dataset}' uses {meta['vocab_size']}: finetune on a GPT-2 BPE dataset (e.g. qazdata)")
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model


def finetuned_model(cfg: TrainConfig, meta: dict, path: Path) -> tuple[GPT, str]:
    """The weights of an earlier run of this repo, and the optimizer they were trained with."""
    checkpoint = load_checkpoint(path)
    print0(f"initializing from {path} (iteration {checkpoint['iter_num']} of that run)")
    if checkpoint.get("tokenizer") != meta["tokenizer"]:
        raise UserError(f"{path} was trained with another tokenizer than dataset '{cfg.dataset}': prepare the "
                        "dataset with the model's tokenizer (e.g. data/qazdata_qa/prepare.py --tokenizer=<the "
                        "dataset folder it was trained on>)")
    model = model_from_checkpoint(checkpoint, dropout=cfg.dropout)
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    return model, checkpoint.get("optimizer_name", "adamw")


def build_model(cfg: TrainConfig, meta: dict, out_dir: Path,
                given: Collection[str]) -> tuple[GPT, Optional[dict], Optional[str]]:
    """The model to train, the checkpoint it resumes from (None unless init_from=resume), and the
    optimizer its weights were trained with (None from scratch). `given`: the keys the config files
    and flags set (a shape among them must be the weights' own, check_architecture)."""
    checkpoint, made_with = None, None
    if cfg.init_from == "scratch":
        model = GPT(scratch_model_config(cfg, meta["vocab_size"]))
    elif cfg.init_from == "resume":
        model, checkpoint = resumed_model(cfg, meta, out_dir)
        made_with = checkpoint.get("optimizer_name", "adamw")  # checkpoints from before Muon: adamw
    elif run_checkpoint(cfg.init_from) is not None:
        model, made_with = finetuned_model(cfg, meta, run_checkpoint(cfg.init_from))
    else:
        model, made_with = pretrained_model(cfg, meta), "adamw"
    if model.config.block_size < cfg.block_size:  # a resumed or pretrained model has its own context length
        raise UserError(f"block_size {cfg.block_size} is larger than {cfg.init_from}'s {model.config.block_size}: "
                        f"use --block_size={model.config.block_size} or less")
    if cfg.init_from != "scratch":
        check_architecture(cfg, model, given)
    return model, checkpoint, made_with


def wrapped_model(raw_model: GPT, use_compile: bool, procs: Processes) -> torch.nn.Module:
    """The model the training loop calls: maybe compiled, maybe DDP-wrapped."""
    model = raw_model
    if use_compile:
        print0("compiling the model...")
        model = torch.compile(model)
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if procs.device.startswith("cuda") else None)
    return model


# fixed by the weights a run starts from
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "mlp_ratio", "bias", "position_encoding", "mlp_activation",
                     "qk_norm")


def check_architecture(cfg: TrainConfig, model: GPT, given: Collection[str]) -> None:
    """A shape asked for (in a config file or flag) that the weights of init_from do not have cannot
    be honoured: refused, rather than silently taken from the weights."""
    for key in ARCHITECTURE_KEYS:
        if key in given and getattr(cfg, key) != getattr(model.config, key):
            raise UserError(f"{key}={getattr(cfg, key)} cannot be honoured: init_from={cfg.init_from} gives a model "
                            f"with {key}={getattr(model.config, key)}; leave {key} out, or train from scratch "
                            "(--init_from=scratch) into a new --out_dir")


def optimizer_name(cfg: TrainConfig, resuming: bool, made_with: Optional[str]) -> str:
    """The optimizer recipe of this run: on resume the checkpoint's; else the one asked for, or the
    one the weights were trained with (GPT-2's: adamw; weights pretrained with AdamW are reported to
    finetune worse under Muon), or muon from scratch."""
    if (resuming or cfg.optimizer is None) and made_with is not None and made_with not in OPTIMIZERS:
        raise UserError(f"the checkpoint records its optimizer as {shown(made_with)}, neither "
                        f"{' nor '.join(OPTIMIZERS)}: it is damaged; its weights can still start a new run with "
                        "--init_from=<the checkpoint file>, --optimizer=muon (or adamw) and a new --out_dir")
    if resuming and cfg.optimizer not in (None, made_with):
        raise UserError(f"the checkpoint was trained with {made_with}: resume with --optimizer={made_with}, "
                        "or leave --optimizer out")
    if resuming:
        return made_with
    return cfg.optimizer or made_with or "muon"


def load_training_state(checkpoint: dict, optimizers: list, scaler, rank: int) -> tuple[int, float]:
    """Optimizers, grad scaler and this rank's RNG state from a checkpoint; returns its iteration and
    best val loss. Each group keeps the base rate this run's config gives it (a resumed run may change
    its learning rates)."""
    try:
        states = [checkpoint["optimizer"], checkpoint.get("muon")][: len(optimizers)]
        for optimizer, state in zip(optimizers, states):
            base_lrs = [group["base_lr"] for group in optimizer.param_groups]
            optimizer.load_state_dict(state)
            check_loaded_state(optimizer)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["base_lr"] = base_lr
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint.get("rng") or []
        if rank < len(states):
            set_rng_state(states[rank])
        return int(checkpoint["iter_num"]), float(checkpoint["best_val_loss"])
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        raise UserError(f"the checkpoint's training state does not load ({type(e).__name__}: {str(e)[:120]}): it is "
                        "damaged or from another version; its weights can still start a new run with "
                        "--init_from=<the checkpoint file> and a new --out_dir") from None


# -----------------------------------------------------------------------------
# evaluation, checkpoints, the run record


@torch.no_grad()
def estimate_loss(model, data: dict, cfg: TrainConfig, procs: Processes, autocast) -> dict[str, float]:
    """Mean loss over eval_iters fixed batches per split (the same batches at every eval)."""
    model.eval()
    out = {}
    for split_id, split in enumerate(("train", "val")):
        losses = torch.zeros(cfg.eval_iters, device=procs.device)
        for k in range(cfg.eval_iters):
            generator = batch_generator(cfg.seed, -1, split_id, k, procs.rank)
            # QA data: one example per window, so that val loss does not depend on pack_examples
            x, y = get_batch(data[split], cfg.batch_size, cfg.block_size, generator, procs.device, packed=False)
            with autocast:
                losses[k] = model(x, y)[1]
        mean = losses.mean()
        if procs.ddp:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        out[split] = mean.item()
    model.train()
    return out


@dataclass
class CheckpointWriter:
    """Writes checkpoints of this run into out_dir: what stays the same is bound here, what
    changes (the iteration, the best val loss) is passed to each save."""
    out_dir: Path
    model: GPT
    optimizers: list  # [AdamW] or [AdamW, Muon]
    optimizer_name: str
    dtype: str  # the autocast dtype it trains in, which a resumed run keeps (resumed_dtype)
    scaler: torch.amp.GradScaler
    meta: dict
    cfg: TrainConfig
    procs: Processes

    def save(self, name: str, iter_num: int, best_val_loss: float) -> None:
        """Write out_dir/name from rank 0, with every rank's RNG state (a collective: all ranks call it)."""
        states = [None] * self.procs.world_size
        if self.procs.ddp:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if self.procs.master:
            save_checkpoint({
                "model": self.model.state_dict(), "optimizer": self.optimizers[0].state_dict(),
                "muon": self.optimizers[1].state_dict() if len(self.optimizers) > 1 else None,
                "optimizer_name": self.optimizer_name, "dtype": self.dtype,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "model_args": self.model.model_args(), "tokenizer": self.meta["tokenizer"], "iter_num": iter_num,
                "best_val_loss": best_val_loss, "config": configurator.config_dict(self.cfg), "rng": states,
            }, self.out_dir / name)

    def save_at_eval(self, iter_num: int, best_val_loss: float, improved: bool) -> list[str]:
        """The checkpoints an evaluation keeps (cfg.keep_checkpoints): ckpt.pt at each, best.pt when
        val improved. Returns their names."""
        names = ["ckpt.pt"] if self.cfg.keep_checkpoints in ("latest", "both") else []
        if self.cfg.keep_checkpoints in ("best", "both") and improved:
            names.append("best.pt")
        for name in names:
            self.save(name, iter_num, best_val_loss)
        return names


class RunLog:
    """The run's record: out_dir/log.jsonl (for plot.py and comparisons) and, if asked, wandb. Rank 0
    only; it also keeps rank 0's lock on out_dir (from claim_out_dir) until it is closed. A run that
    replaces an earlier one (replace_earlier) sets that run's files aside here, once wandb has started,
    and deletes them when it has saved its first checkpoint or ended; a run that fails before that puts
    them back (kazgpt.files.SetAside)."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, active: bool, lock=None, replace_earlier: bool = False):
        self.lock, self.file, self.wandb, self.earlier = lock, None, None, None
        if active and cfg.wandb_log:  # first: a wandb that cannot start leaves no log.jsonl in the way of a re-run
            import wandb

            try:
                wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=configurator.config_dict(cfg))
            except Exception as e:  # not logged in, no network, a bad project name
                raise UserError(f"wandb could not start ({type(e).__name__}: {str(e).strip()[:150]}): run `wandb "
                                "login`, or set WANDB_MODE=offline, or leave out --wandb_log") from None
            self.wandb = wandb
        if active and replace_earlier:
            self.earlier = SetAside(out_dir, RUN_FILES)
        self.file = open(out_dir / "log.jsonl", "a", encoding="utf-8") if active else None

    def record(self, entry: dict) -> None:
        if self.file:
            self.file.write(json.dumps(entry) + "\n")
            self.file.flush()
        if self.wandb and "val_loss" in entry:
            self.wandb.log({"iter": entry["iter"], "train/loss": entry["train_loss"], "val/loss": entry["val_loss"],
                            "val/bpb": entry["val_bpb"], "lr": entry["lr"]})

    def replace_earlier_run(self) -> None:
        """This run stands (it saved a checkpoint, or ended): the earlier run it replaces, if any, is deleted."""
        if self.earlier:
            self.earlier.replaced()

    def close(self) -> None:
        self.replace_earlier_run()
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()
        if self.lock:
            self.lock.close()


def report_eval(losses: dict, meta: dict, iter_num: int, tokens: int, lr: float, run_log: RunLog) -> None:
    """The eval line ('step N: ...', nanoGPT's shape) and its record, with val bits per byte where
    the dataset knows its val bytes."""
    val_bpb = bits_per_byte(losses["val"], meta["val_tokens"], meta["val_bytes"]) if meta.get("val_bytes") else None
    print0(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
           + (f", val bpb {val_bpb:.4f}" if val_bpb is not None else ""))
    run_log.record({"iter": iter_num, "tokens": tokens, "train_loss": losses["train"], "val_loss": losses["val"],
                    "val_bpb": val_bpb, "lr": lr})


def report_step(loss: float, seconds: float, mfu: float, iter_num: int, tokens_per_iter: int, lr: float,
                run_log: RunLog) -> None:
    """The training line ('iter N: ...', nanoGPT's shape) and its record; seconds is per step."""
    shown_mfu = f"{mfu * 100:.2f}%" if mfu >= 0 else "n/a"  # not measured in the first steps (warm-up)
    print0(f"iter {iter_num}: loss {loss:.4f}, time {seconds * 1000:.2f}ms, mfu {shown_mfu}, "
           f"{tokens_per_iter / seconds:,.0f} tok/s")
    run_log.record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "loss": loss, "lr": lr,
                    "ms": seconds * 1000, "mfu": mfu if mfu >= 0 else None})


class SpeedMeter:
    """Seconds per step over each interval between read-backs, and MFU as a running mean that
    leaves out the first steps (compilation, warm-up)."""

    def __init__(self, model: GPT, tokens_per_iter: int, world_size: int, peak_flops: float, start_iter: int):
        self.model, self.tokens_per_iter, self.world_size = model, tokens_per_iter, world_size
        self.peak_flops, self.start_iter = peak_flops, start_iter
        self.mfu, self.t_last = -1.0, time.perf_counter()

    def update(self, iter_num: int, steps: int) -> float:
        """Seconds per step over the last `steps` steps, which ended at iter_num (call after a read-back)."""
        now = time.perf_counter()
        seconds, self.t_last = (now - self.t_last) / steps, now
        if iter_num - self.start_iter >= 5:
            mfu = self.model.estimate_mfu(self.tokens_per_iter / seconds / self.world_size, self.peak_flops)
            self.mfu = mfu if self.mfu < 0 else 0.9 * self.mfu + 0.1 * mfu
        return seconds


class StopSignal:
    """SIGTERM/SIGINT ask the run to stop after the current step, with a checkpoint (eval_only: after
    the evaluation, which writes none); a second signal exits at once."""

    def __init__(self, eval_only: bool):
        self.signum = 0
        self.plan = ("finishing the evaluation, then exiting (eval_only writes no checkpoint)" if eval_only
                     else "finishing this step, then saving a checkpoint and exiting")
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self.handle)

    def handle(self, signum, frame):
        # os.write, not print: a handler that prints while the program is printing can crash it
        name = signal.Signals(signum).name
        if self.signum:
            os.write(2, f"\nsecond {name}: exiting now without a checkpoint\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        if is_rank0():
            os.write(2, f"\n{name} received: {self.plan} (send it again to exit at once)\n".encode())


def agreed_signal(signum: int, procs: Processes) -> int:
    """The signal every process stops for (the largest any of them received), so that all stop together."""
    if not procs.ddp:
        return signum
    flag = torch.tensor(signum, device=procs.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def read_back_losses(step_losses: list, procs: Processes, first_iter: int, out_dir: Path) -> list[float]:
    """The per-step losses kept on the device since the last read-back, averaged over processes:
    one transfer and one collective per log interval. A non-finite loss stops the run, naming its step."""
    losses = torch.stack(step_losses)
    if procs.ddp:
        dist.all_reduce(losses, op=dist.ReduceOp.AVG)
    values = losses.tolist()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise UserError(f"the loss became {value} at step {first_iter + i}; {out_dir} keeps the last good "
                            "checkpoint: lower --learning_rate or use --dtype=float32/bfloat16")
    return values


def train_step(model, raw_model: GPT, optimizers: list, scaler, batches, batch: tuple, accum_steps: int,
               grad_clip: float, ddp: bool, autocast) -> tuple[torch.Tensor, tuple]:
    """One optimizer step over accum_steps micro-batches of this process, gradients averaged over
    all processes. Returns the step's mean loss, left on the device, and the next batch."""
    x, y = batch
    loss_sum = torch.zeros((), device=x.device)
    for micro_step in range(accum_steps):
        sync = nullcontext() if (not ddp or micro_step == accum_steps - 1) else model.no_sync()
        with sync:  # DDP all-reduces gradients on the last micro-step only
            with autocast:
                _, loss = model(x, y)
            x, y = next(batches)  # the host prepares the next batch while the device works
            loss_sum += loss.detach()
            scaler.scale(loss / accum_steps).backward()
    step_optimizers(optimizers, scaler, raw_model.parameters(), grad_clip)
    return loss_sum / accum_steps, (x, y)


# -----------------------------------------------------------------------------


def main() -> int:
    given = configurator.load_overrides(TrainConfig, sys.argv[1:], verbose=is_rank0(), retired=RETIRED_KEYS)
    cfg = TrainConfig(**given)
    check_ranges(cfg)

    # ---- processes and devices ----
    procs = setup_processes(cfg)
    device = procs.device
    accum_steps = cfg.gradient_accumulation_steps // procs.world_size  # micro-steps per process
    dtype = training_dtype(cfg, procs)  # an explicit one that this device cannot run is refused here
    use_compile = device.startswith("cuda") if cfg.compile is None else cfg.compile
    torch.manual_seed(cfg.seed + procs.rank)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size

    # ---- data ----
    data_dir = dataset_dir(cfg)
    meta = load_dataset_meta(data_dir, cfg.block_size)
    data = open_token_files(data_dir, meta["kind"])
    print0(f"dataset {cfg.dataset}: {len(data['train']):,} train tokens, {len(data['val']):,} val tokens, "
           f"vocab {meta['vocab_size']}")

    # ---- model and optimizer ----
    out_dir, resuming = Path(cfg.out_dir), cfg.init_from == "resume"
    early_lock = claim_out_dir(out_dir, resuming, cfg.overwrite, create=False) if procs.master else None
    raw_model, checkpoint, made_with = build_model(cfg, meta, out_dir, given)  # plain module: checkpoints, MFU
    raw_model.to(device)
    dtype = dtype_once_loaded(cfg, dtype, checkpoint, device)
    autocast = autocast_context(device, dtype)
    print0(f"device {device}, dtype {dtype}, compile {use_compile}, {procs.world_size} process(es), "
           f"tokens per iteration {tokens_per_iter:,}\nmodel: {raw_model.num_params() / 1e6:.2f}M parameters")
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == "float16"))
    opt_name = optimizer_name(cfg, checkpoint is not None, made_with)
    optimizers = build_optimizers(raw_model, opt_name, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                  cfg.muon_lr, cfg.muon_momentum, device, newton_schulz_dtype(dtype))
    print0(f"optimizer {opt_name}")
    iter_num, best_val_loss = (0, math.inf) if checkpoint is None else \
        load_training_state(checkpoint, optimizers, scaler, procs.rank)
    checkpoint = None  # free memory
    # a missing out_dir is made only now, so that a run refused above has created and changed nothing
    out_lock = early_lock or claim_out_dir(out_dir, resuming, cfg.overwrite, create=True) if procs.master else None
    if procs.master:  # what a run killed while saving left: its temporary files, only those
        remove_stale_checkpoint_temporaries(out_dir)
    model = wrapped_model(raw_model, use_compile, procs)  # what the loop calls

    # ---- training loop ----
    run_log = RunLog(out_dir, cfg, procs.master, out_lock, replace_earlier=cfg.overwrite and not resuming)
    writer = CheckpointWriter(out_dir, raw_model, optimizers, opt_name, dtype, scaler, meta, cfg, procs)
    stop = StopSignal(cfg.eval_only)
    speed = SpeedMeter(raw_model, tokens_per_iter, procs.world_size, device_peak_flops(device, dtype), iter_num)
    batches = training_batches(data["train"], cfg.batch_size, cfg.block_size, cfg.seed, iter_num, accum_steps,
                               procs.rank * accum_steps, device, cfg.pack_examples)
    batch = next(batches)  # each next batch is fetched while the device computes the current one
    start_iter, signum = iter_num, 0
    step_losses: list[torch.Tensor] = []  # per-step losses on the device, read back at the next log step
    while True:
        lr_scale = lr_multiplier(iter_num, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr / cfg.learning_rate,
                                 cfg.lr_schedule) if cfg.decay_lr else 1.0
        set_lr(optimizers, lr_scale)
        last_iter = iter_num >= cfg.max_iters
        if iter_num % cfg.eval_interval == 0 or last_iter or cfg.eval_only:
            losses = estimate_loss(model, data, cfg, procs, autocast)
            report_eval(losses, meta, iter_num, iter_num * tokens_per_iter, cfg.learning_rate * lr_scale, run_log)
            # only evaluations that can save count toward the best: were the starting weights' val
            # loss the bar, a run that never beat it would end without best.pt
            if iter_num > start_iter and not cfg.eval_only and math.isfinite(losses["val"]):
                improved = losses["val"] < best_val_loss
                best_val_loss = min(best_val_loss, losses["val"])
                saved = writer.save_at_eval(iter_num, best_val_loss, improved)
                if saved:  # keep_checkpoints='best' saves nothing when val did not improve
                    print0(f"saved {' and '.join(saved)} to {out_dir}")
                    run_log.replace_earlier_run()
        if cfg.eval_only or last_iter:
            break

        step_loss, batch = train_step(model, raw_model, optimizers, scaler, batches, batch, accum_steps,
                                      cfg.grad_clip, procs.ddp, autocast)
        iter_num += 1
        step_losses.append(step_loss)
        read_back = any(iter_num % n == 0 for n in (cfg.log_interval, cfg.eval_interval)) or iter_num >= cfg.max_iters
        if read_back:
            lossf = read_back_losses(step_losses, procs, iter_num - len(step_losses) + 1, out_dir)[-1]
            seconds = speed.update(iter_num, len(step_losses))
            step_losses = []
            if iter_num % cfg.log_interval == 0:
                report_step(lossf, seconds, speed.mfu, iter_num, tokens_per_iter, cfg.learning_rate * lr_scale, run_log)

        # under DDP every process must agree to stop, or the next collective would hang: they agree at read-backs
        signum = agreed_signal(stop.signum, procs) if (read_back or not procs.ddp) else 0
        if signum:
            if step_losses:  # never save weights that a pending non-finite loss has spoilt
                read_back_losses(step_losses, procs, iter_num - len(step_losses) + 1, out_dir)
            writer.save("ckpt.pt", iter_num, best_val_loss)
            print0(f"stopped at iteration {iter_num}: checkpoint saved to {out_dir / 'ckpt.pt'}; "
                   "continue with --init_from=resume")
            break

    run_log.close()
    if procs.ddp:
        dist.destroy_process_group()
    return 128 + signum if signum else 0


if __name__ == "__main__":
    run_main(main, memory_hint="use a smaller --batch_size or --block_size (raise --gradient_accumulation_steps "
                               "to keep the tokens per iteration), or a smaller model (--n_layer, --n_embd)")
