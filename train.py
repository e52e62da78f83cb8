"""
Train a GPT. One process on one device:

    python train.py config/train_qazdata_char.py --device=cpu --compile=False

DDP on one node with 8 GPUs:

    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

DDP on 2 nodes (run on each, with node_rank 0 and 1; master_addr is node 0's address):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py config/train_gpt2.py

(without Infiniband, prefix the command with NCCL_IB_DISABLE=1)

Settings are the TrainConfig fields below, overridden by config files and --key=value flags
(see configurator.py). The checkpoint in out_dir holds everything needed to continue exactly
where a run stopped (init_from=resume), and everything sample.py needs (model and tokenizer).
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from common import (REPO_ROOT, UserError, autocast_context, bits_per_byte, closest, device_peak_flops, find_checkpoint,
                    is_rank0, keep_freed_memory_for_reuse, load_checkpoint, load_dataset_meta, print0, resolve_device,
                    resolve_dtype, run_main, save_checkpoint)
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False  # evaluate once and exit
    always_save_checkpoint: bool = True  # save ckpt.pt at every eval, not only when val loss improves
    keep_checkpoints: str = "both"  # 'latest' (ckpt.pt), 'best' (best.pt, lowest val loss) or 'both'
    init_from: str = "scratch"  # 'scratch', 'resume' (from out_dir), 'gpt2*', or a local Hugging Face GPT-2 folder
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
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # 0 for pretraining, 0.1+ for finetuning
    bias: bool = False  # biases in Linear and LayerNorm layers
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000  # ~max_iters per the Chinchilla paper
    min_lr: float = 6e-5  # ~learning_rate/10 per the Chinchilla paper
    # system
    backend: str = "nccl"  # DDP backend on CUDA; CPU runs use gloo
    device: Optional[str] = None  # None: cuda, then mps, then cpu
    dtype: Optional[str] = None  # None: bf16 on CUDA where supported (else fp16) and on CPUs with fast bf16 matmuls, else fp32
    compile: Optional[bool] = None  # None: compile on CUDA, where it pays; eager on CPU and MPS
    seed: int = 1337


def check_ranges(cfg: TrainConfig) -> None:
    positive = ("batch_size", "block_size", "gradient_accumulation_steps", "eval_interval", "log_interval", "eval_iters",
                "n_layer", "n_head", "n_embd")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_iters < 0:
        raise UserError(f"max_iters must be 0 or more, got {cfg.max_iters}")
    for key in ("learning_rate", "min_lr"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and 0 <= value < 10) or (key == "learning_rate" and value == 0):
            raise UserError(f"{key} must be a positive number below 10, got {value}")
    if not 0 <= cfg.dropout < 1:
        raise UserError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.keep_checkpoints not in ("latest", "best", "both"):
        raise UserError(f"keep_checkpoints must be 'latest', 'best' or 'both', got '{cfg.keep_checkpoints}'")


def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup from learning_rate/(warmup_iters+1) (never 0), then cosine decay to min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def batch_generator(*key: int) -> torch.Generator:
    """A generator seeded from (seed, step, micro-step, ...): batches are a pure function of the
    position in training, so a resumed run draws exactly the batches the uninterrupted run would
    have, and a DDP run over W processes draws the same sequences as one process accumulating W
    times as many micro-steps. (Python's hash of a tuple of ints does not vary between runs.)"""
    return torch.Generator().manual_seed(hash(key) & 0x7FFF_FFFF_FFFF_FFFF)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator, device: str):
    """x, y (B, T): random windows of the token file and the same windows shifted by one."""
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    windows = torch.from_numpy(data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    x, y = windows[:, :-1], windows[:, 1:]
    if device.startswith("cuda"):  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.contiguous().to(device), y.contiguous().to(device)


def rng_state() -> dict:
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


class StopSignal:
    """SIGTERM/SIGINT ask the run to stop after the current step, with a checkpoint; a second
    signal exits at once."""

    def __init__(self):
        self.signum = 0
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
            os.write(2, f"\n{name} received: finishing this step, then saving a checkpoint and exiting (send it again to exit at once)\n".encode())


def prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {out_dir} is a file, not a folder: choose another --out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"out_dir {out_dir} is not writable ({e.strerror}): choose another --out_dir") from None
    for stale in out_dir.glob(".*.pt.tmp*"):  # left by a run killed while saving
        stale.unlink()


def main() -> int:
    cfg = configurator.load_config(TrainConfig, sys.argv[1:], verbose=is_rank0())
    check_ranges(cfg)

    # ---- processes and devices ----
    ddp = int(os.environ.get("RANK", -1)) != -1
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if ddp else 1
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the number of processes ({world_size}): it counts micro-steps over all of them")
    device = resolve_device(cfg.device)
    if device == "cpu":
        keep_freed_memory_for_reuse()
    if ddp:
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        backend = cfg.backend if device.startswith("cuda") else "gloo"  # NCCL needs GPUs
        if backend != cfg.backend:
            print0(f"DDP on {device}: using the gloo backend instead of {cfg.backend}")
        dist.init_process_group(backend=backend)
    else:
        rank, local_rank = 0, 0
    master = rank == 0
    accum_steps = cfg.gradient_accumulation_steps // world_size  # micro-steps per process
    dtype = resolve_dtype(cfg.dtype, device, training=True)
    if ddp and device == "cpu" and cfg.dtype is None:  # a timing picked it: every rank takes rank 0's pick
        picked = [dtype]
        dist.broadcast_object_list(picked, src=0)
        dtype = picked[0]
    use_compile = device.startswith("cuda") if cfg.compile is None else cfg.compile
    torch.manual_seed(cfg.seed + rank)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = autocast_context(device, dtype)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
    print0(f"device {device}, dtype {dtype}, compile {use_compile}, {world_size} process(es), tokens per iteration {tokens_per_iter:,}")

    # ---- data ----
    data_dir = Path(cfg.data_dir) if cfg.data_dir else REPO_ROOT / "data" / cfg.dataset
    if not data_dir.is_dir() and not cfg.data_dir:
        known = [p.name for p in (REPO_ROOT / "data").iterdir() if p.is_dir() and not p.name.startswith("_")]
        raise UserError(f"unknown dataset '{cfg.dataset}': no folder data/{cfg.dataset}{closest(cfg.dataset, known)}")
    meta = load_dataset_meta(data_dir, cfg.block_size)
    # one memmap per split, opened once; the OS page cache, not this process, holds what was read
    data = {split: np.memmap(data_dir / f"{split}.bin", dtype=np.uint16, mode="r") for split in ("train", "val")}
    print0(f"dataset {cfg.dataset}: {len(data['train']):,} train tokens, {len(data['val']):,} val tokens, vocab {meta['vocab_size']}")

    # ---- model ----
    out_dir = Path(cfg.out_dir)
    if master:
        prepare_out_dir(out_dir)
    iter_num, best_val_loss, checkpoint = 0, float("inf"), None
    if cfg.init_from == "scratch":
        padded_vocab = -(-meta["vocab_size"] // 64) * 64  # a multiple of 64 makes the output matmul faster on GPUs
        model_config = GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab, n_layer=cfg.n_layer,
                                 n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
        model = GPT(model_config)
    elif cfg.init_from == "resume":
        ckpt_path = find_checkpoint(out_dir)
        checkpoint = load_checkpoint(ckpt_path)
        print0(f"resuming from {ckpt_path} at iteration {checkpoint['iter_num']}")
        model_config = GPTConfig(**{**checkpoint["model_args"], "dropout": cfg.dropout})
        if checkpoint["tokenizer"] != meta["tokenizer"] or model_config.vocab_size < meta["vocab_size"]:
            raise UserError(f"checkpoint {ckpt_path} was trained with another vocabulary than dataset '{cfg.dataset}' "
                            f"({model_config.vocab_size} vs {meta['vocab_size']} tokens): resume with the dataset it was trained on")
        model = GPT(model_config)
        model.load_state_dict(checkpoint["model"])
        iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
    else:  # gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a local transformers GPT-2 folder
        if not (cfg.init_from.startswith("gpt2") or Path(cfg.init_from).is_dir()):
            raise UserError(f"init_from must be scratch, resume, gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local GPT-2 folder; got '{cfg.init_from}'")
        print0(f"initializing from OpenAI GPT-2 weights: {cfg.init_from}")
        model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout)
        if model.config.vocab_size < meta["vocab_size"]:
            raise UserError(f"'{cfg.init_from}' has a vocabulary of {model.config.vocab_size} tokens but dataset '{cfg.dataset}' uses {meta['vocab_size']}: finetune on a GPT-2 BPE dataset (e.g. qazdata)")
        if cfg.block_size < model.config.block_size:
            model.crop_block_size(cfg.block_size)
        model_config = model.config
    if model_config.block_size < cfg.block_size:  # a resumed or pretrained model has its own context length
        raise UserError(f"block_size {cfg.block_size} is larger than {cfg.init_from}'s {model_config.block_size}: use --block_size={model_config.block_size} or less")
    model.to(device)
    raw_model = model  # the plain module, for checkpoints and MFU; `model` may be compiled and DDP-wrapped
    print0(f"model: {raw_model.num_params() / 1e6:.2f}M parameters")

    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == "float16"))
    optimizer = raw_model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        states = checkpoint.get("rng") or []
        if rank < len(states):
            set_rng_state(states[rank])
    checkpoint = None  # free memory

    if use_compile:
        print0("compiling the model...")
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.startswith("cuda") else None)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        """Mean loss over eval_iters fixed batches per split (the same batches at every eval)."""
        model.eval()
        out = {}
        for split_id, split in enumerate(("train", "val")):
            losses = torch.zeros(cfg.eval_iters, device=device)
            for k in range(cfg.eval_iters):
                x, y = get_batch(data[split], cfg.batch_size, cfg.block_size, batch_generator(cfg.seed, -1, split_id, k, rank), device)
                with autocast:
                    losses[k] = model(x, y)[1]
            mean = losses.mean()
            if ddp:
                dist.all_reduce(mean, op=dist.ReduceOp.AVG)
            out[split] = mean.item()
        model.train()
        return out

    def save(name: str) -> None:
        """Write out_dir/name from rank 0, with every rank's RNG state."""
        states = [None] * world_size
        if ddp:
            dist.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if master:
            save_checkpoint({
                "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "model_args": raw_model.model_args(),
                "tokenizer": meta["tokenizer"], "iter_num": iter_num, "best_val_loss": best_val_loss,
                "config": configurator.config_dict(cfg), "rng": states,
            }, out_dir / name)

    run_log = open(out_dir / "log.jsonl", "a", encoding="utf-8") if master else None

    def record(entry: dict) -> None:
        """Append one line to out_dir/log.jsonl, the run's record for plots and comparisons."""
        if run_log:
            run_log.write(json.dumps(entry) + "\n")
            run_log.flush()

    if cfg.wandb_log and master:
        import wandb

        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=configurator.config_dict(cfg))

    # ---- training loop ----
    stop = StopSignal()
    peak_flops = device_peak_flops(device, dtype)
    start_iter = iter_num
    running_mfu = -1.0
    signum = 0  # the signal that stopped the run, if any
    t_last = time.perf_counter()
    while True:
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr

        last_iter = iter_num >= cfg.max_iters
        if iter_num % cfg.eval_interval == 0 or last_iter or cfg.eval_only:
            losses = estimate_loss()
            val_bpb = bits_per_byte(losses["val"], meta["val_tokens"], meta["val_bytes"]) if meta.get("val_bytes") else None
            print0(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                   + (f", val bpb {val_bpb:.4f}" if val_bpb is not None else ""))
            record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "train_loss": losses["train"],
                    "val_loss": losses["val"], "val_bpb": val_bpb, "lr": lr})
            if cfg.wandb_log and master:
                wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "val/bpb": val_bpb, "lr": lr})
            improved = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if iter_num > start_iter and not cfg.eval_only:
                if cfg.keep_checkpoints in ("latest", "both") and (improved or cfg.always_save_checkpoint or last_iter):
                    save("ckpt.pt")
                if cfg.keep_checkpoints in ("best", "both") and improved:
                    save("best.pt")
                print0(f"saved checkpoint to {out_dir}")
        if cfg.eval_only or last_iter:
            break

        # one optimizer step: accum_steps micro-steps per process, gradients averaged over all of them
        loss_sum = torch.zeros((), device=device)
        for micro_step in range(accum_steps):
            global_micro = rank * accum_steps + micro_step
            x, y = get_batch(data["train"], cfg.batch_size, cfg.block_size, batch_generator(cfg.seed, iter_num, global_micro), device)
            sync = nullcontext() if (not ddp or micro_step == accum_steps - 1) else model.no_sync()
            with sync:  # DDP all-reduces gradients on the last micro-step only
                with autocast:
                    _, loss = model(x, y)
                loss_sum += loss.detach()
                scaler.scale(loss / accum_steps).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        iter_num += 1

        loss_mean = loss_sum / accum_steps
        if ddp:
            dist.all_reduce(loss_mean, op=dist.ReduceOp.AVG)
        lossf = loss_mean.item()
        if not math.isfinite(lossf):
            raise UserError(f"the loss became {lossf} at step {iter_num}; {out_dir} keeps the last good checkpoint: lower --learning_rate or use --dtype=float32/bfloat16")
        now = time.perf_counter()
        dt, t_last = now - t_last, now
        if iter_num % cfg.log_interval == 0:
            tokens_per_sec = tokens_per_iter / dt
            if iter_num - start_iter >= 5:  # let the first iterations (compilation, warmup) pass
                mfu = raw_model.estimate_mfu(tokens_per_sec / world_size, peak_flops)
                running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
            print0(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, mfu {running_mfu * 100:.2f}%, {tokens_per_sec:,.0f} tok/s")
            record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "loss": lossf, "lr": lr,
                    "ms": dt * 1000, "mfu": running_mfu if running_mfu >= 0 else None})

        signum = stop.signum
        if ddp:  # every process must agree to stop, or the next collective would hang
            flag = torch.tensor(signum, device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum:
            save("ckpt.pt")
            print0(f"stopped at iteration {iter_num}: checkpoint saved to {out_dir / 'ckpt.pt'}; continue with --init_from=resume")
            break

    if run_log:
        run_log.close()
    if cfg.wandb_log and master:
        wandb.finish()
    if ddp:
        dist.destroy_process_group()
    return 128 + signum if signum else 0


if __name__ == "__main__":
    run_main(main)
