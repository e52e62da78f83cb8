"""
Train a GPT. One process on one device:

    python train.py config/train_qazdata_char.py --device=cpu --compile=False

DDP on one node with 8 GPUs:

    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

DDP on 2 nodes (run on each, node_rank 0 and 1; master_addr is node 0's; NCCL_IB_DISABLE=1 without Infiniband):

    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 train.py ...

Settings are the TrainConfig fields below, overridden by config files and --key=value flags
(configurator.py). A run's folder (out_dir) holds its checkpoints, from which a run continues
exactly (init_from=resume) and sample.py samples, and log.jsonl.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from configurator import setting
from kazgpt.checkpoint import CHECKPOINT_NAMES, rng_state, save_checkpoint, set_rng_state, start_model
from kazgpt.cli import UserError, closest, is_rank0, print0, run_main
from kazgpt.dataset import (REPO_ROOT, batch_generator, bits_per_byte, get_batch, load_dataset_meta, open_token_files,
                            training_batches)
from kazgpt.device import (DTYPES, autocast_context, device_peak_flops, keep_freed_memory_for_reuse, resolve_device,
                           resolve_dtype)
from kazgpt.distributed import Processes, StopSignal, setup_processes
from kazgpt.optim import (LR_SCHEDULES, OPTIMIZERS, build_optimizers, choose_optimizer, lr_multiplier,
                          newton_schulz_dtype, set_lr, step_optimizers)
from model import GPT, GPTConfig


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"
    eval_interval: int = setting(2000, min=1)
    log_interval: int = setting(1, min=1)  # a log line, and the only read-back of the loss from the device
    eval_iters: int = setting(200, min=1)
    eval_only: bool = False  # evaluate once and exit
    keep_checkpoints: str = setting("both", choices=("latest", "best", "both"))  # ckpt.pt at every eval, best.pt
    overwrite: bool = False  # replace the run in out_dir (its files go at this run's first checkpoint)
    # 'scratch', 'resume' (from out_dir), a run of this repo to finetune (its out_dir or a checkpoint file: the
    # weights, a new optimizer state), or a transformers model (gpt2*, a folder, a hub name 'owner/name')
    init_from: str = "scratch"
    # wandb logging
    wandb_log: bool = False
    wandb_project: str = "owt"
    wandb_run_name: str = "gpt2"
    # data
    dataset: str = "openwebtext"  # a folder under data/ prepared by its prepare.py
    data_dir: Optional[str] = None  # where the dataset's files are; None: data/<dataset>
    gradient_accumulation_steps: int = setting(5 * 8, min=1)  # micro-steps per optimizer step, all processes
    batch_size: int = setting(12, min=1)  # micro-batch size per process
    block_size: int = setting(1024, min=1)
    pack_examples: bool = True  # QA datasets: a window runs on into the examples after its first one
    # model
    n_layer: int = setting(12, min=1)
    n_head: int = setting(12, min=1)
    n_embd: int = setting(768, min=1)
    mlp_ratio: float = setting(4.0, above=0)  # the MLP's hidden width over n_embd (GPT-2's: 4)
    dropout: float = setting(0.0, min=0, below=1)  # 0 for pretraining, 0.1+ for finetuning
    bias: bool = False  # biases in Linear and LayerNorm layers
    # from scratch, three choices newer than GPT-2 (a model started from weights keeps the weights' own):
    position_encoding: str = setting("rope", choices=("rope", "learned"))  # rotary, or GPT-2's embeddings
    mlp_activation: str = setting("relu2", choices=("relu2", "gelu"))  # ReLU squared, or GPT-2's GELU
    qk_norm: bool = True  # LayerNorm each head's queries and keys (no gain)
    span_head: bool = False  # learn to point at a QA example's answer in its passage (added when finetuning)
    # optimizer: 'muon' (Muon for the blocks' matrices, AdamW for the rest) or 'adamw' (AdamW for all);
    # None: muon from scratch, adamw from transformers weights, else the one the checkpoint was made with
    optimizer: Optional[str] = setting(None, choices=OPTIMIZERS)
    learning_rate: float = setting(6e-4, above=0)  # AdamW's
    max_iters: int = setting(600000, min=0)
    weight_decay: float = setting(1e-1, min=0)  # AdamW's, on matrices and embeddings
    beta1: float = setting(0.9, min=0, below=1)
    beta2: float = setting(0.95, min=0, below=1)
    muon_lr: float = setting(0.02, above=0)
    muon_momentum: float = setting(0.95, min=0, below=1)
    grad_clip: float = setting(1.0, min=0)  # 0 disables clipping
    # learning rate schedule: linear warmup, then decay to min_lr along lr_schedule
    decay_lr: bool = True
    lr_schedule: str = setting("cosine", choices=LR_SCHEDULES)
    warmup_iters: int = setting(2000, min=0)
    lr_decay_iters: int = setting(600000, min=0)  # ~max_iters per the Chinchilla paper
    min_lr: float = setting(6e-5, min=0)  # ~learning_rate/10 per the Chinchilla paper
    # system
    backend: str = setting("nccl", choices=("nccl", "gloo"))  # DDP backend on CUDA; CPU runs use gloo
    device: Optional[str] = None  # None: cuda, then mps, then cpu
    dtype: Optional[str] = setting(None, choices=tuple(DTYPES))  # None: bf16 where it is fast, else float32
    compile: Optional[bool] = None  # None: compile on CUDA, where it pays; eager on CPU and MPS
    seed: int = setting(1337, min=0, max=2**62)


# fixed by the weights a run starts from: a value asked for that the weights do not have is refused
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_embd", "mlp_ratio", "bias", "position_encoding", "mlp_activation",
                     "qk_norm")


def dataset_folder(cfg: TrainConfig) -> Path:
    if cfg.data_dir:
        return Path(cfg.data_dir)
    known = sorted(p.name for p in (REPO_ROOT / "data").iterdir() if (p / "prepare.py").is_file())
    if cfg.dataset not in known:
        raise UserError(f"unknown dataset '{cfg.dataset}'{closest(cfg.dataset, known)}: the datasets are "
                        f"{', '.join(known)} (or give a prepared folder with --data_dir)")
    return REPO_ROOT / "data" / cfg.dataset


def check_out_dir(out_dir: Path, cfg: TrainConfig) -> None:
    """A folder is a run once it holds a checkpoint: a new run into it needs --overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir {out_dir} is a file, not a folder: choose another --out_dir")
    held = [name for name in CHECKPOINT_NAMES if (out_dir / name).is_file()]
    if held and cfg.init_from != "resume" and not cfg.overwrite and not cfg.eval_only:
        raise UserError(f"out_dir {out_dir} already holds a run ({', '.join(held)}): continue it with "
                        "--init_from=resume, choose another --out_dir, or replace it with --overwrite")
    if not cfg.eval_only:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)  # an empty folder is no run: nothing is claimed yet
        except OSError as e:
            raise UserError(f"cannot create out_dir {out_dir} ({e.strerror}): choose another --out_dir") from None


def build_model(cfg: TrainConfig, meta: dict, given: dict) -> tuple[GPT, Optional[dict]]:
    """The model to train and the checkpoint it starts from (None from scratch or transformers weights)."""
    if cfg.init_from == "scratch":
        padded_vocab = -(-meta["vocab_size"] // 64) * 64  # a multiple of 64 makes the output matmul faster
        try:
            return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=padded_vocab, dropout=cfg.dropout,
                                 span_head=cfg.span_head, **{k: getattr(cfg, k) for k in ARCHITECTURE_KEYS})), None
        except ValueError as e:
            raise UserError(f"{e}: change the model's settings (--n_head, --n_embd)") from None
    model, checkpoint = start_model(cfg.init_from, Path(cfg.out_dir), meta["tokenizer"], meta["vocab_size"],
                                    cfg.dropout)
    if model.config.block_size < cfg.block_size:
        raise UserError(f"block_size {cfg.block_size} is larger than {cfg.init_from}'s {model.config.block_size}: "
                        f"use --block_size={model.config.block_size} or less")
    model.crop_block_size(cfg.block_size)
    if cfg.span_head and not model.config.span_head:
        model.add_span_head()
    for key in ARCHITECTURE_KEYS:
        if key in given and given[key] != getattr(model.config, key):
            raise UserError(f"{key}={given[key]} cannot be honoured: init_from={cfg.init_from} gives a model with "
                            f"{key}={getattr(model.config, key)}; leave {key} out, or train from scratch")
    return model, checkpoint


def load_training_state(checkpoint: dict, optimizers: list, scaler, rank: int) -> tuple[int, float]:
    """Optimizers, grad scaler and this rank's RNG state from a checkpoint; its iteration and best val
    loss. Each group keeps the base rate this run's config gives it (a resumed run may change them)."""
    try:
        for optimizer, state in zip(optimizers, [checkpoint["optimizer"], checkpoint.get("muon")]):
            base_lrs = [group["base_lr"] for group in optimizer.param_groups]
            optimizer.load_state_dict(state)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["base_lr"] = base_lr
        if checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        if rank < len(checkpoint.get("rng") or []):
            set_rng_state(checkpoint["rng"][rank])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"the checkpoint's training state does not load ({type(e).__name__}): it is damaged; its "
                        "weights can still start a new run with --init_from=<the checkpoint file>") from None
    return checkpoint["iter_num"], float(checkpoint["best_val_loss"])


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
            x, y, matches = get_batch(data[split], cfg.batch_size, cfg.block_size, generator, procs.device,
                                      packed=False)
            with autocast:
                losses[k] = model(x, y, matches=matches)[1]
        mean = losses.mean()
        if procs.ddp:
            dist.all_reduce(mean, op=dist.ReduceOp.AVG)
        out[split] = mean.item()
    model.train()
    return out


class RunLog:
    """The run's record, rank 0 only: out_dir/log.jsonl (for plot.py) and wandb. A run replacing another
    (--overwrite) keeps its lines in memory until its first checkpoint: one that saves none changes nothing."""

    def __init__(self, path: Path, cfg: TrainConfig, active: bool, resuming: bool, replacing: bool):
        self.path, self.active, self.pending, self.file, self.wandb = path, active, [], None, None
        self.replacing = active and replacing  # until start(): the earlier run's files are still there
        if active and cfg.wandb_log:
            import wandb  # only when asked for: it is slow to import
            try:
                wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=configurator.config_dict(cfg))
            except Exception as e:  # not logged in, no network
                raise UserError(f"wandb could not start ({type(e).__name__}: {str(e)[:150]}): run `wandb login`, "
                                "set WANDB_MODE=offline, or leave out --wandb_log") from None
            self.wandb = wandb
        if active and not replacing:
            self.start("a" if resuming else "w")

    def start(self, mode: str = "w") -> None:
        self.replacing = False
        self.file = open(self.path, mode, encoding="utf-8")
        self.file.writelines(self.pending)
        self.file.flush()

    def record(self, entry: dict) -> None:
        if not self.active:
            return
        line = json.dumps(entry) + "\n"
        if self.file:
            self.file.write(line)
            self.file.flush()
        else:
            self.pending.append(line)
        if self.wandb and "val_loss" in entry:
            self.wandb.log({k: entry[k] for k in ("iter", "train_loss", "val_loss", "val_bpb", "lr")})

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.wandb:
            self.wandb.finish()


def read_back(step_losses: list, procs: Processes, first_iter: int) -> list[float]:
    """The per-step losses kept on the device since the last read-back, averaged over processes: one
    transfer and one collective per log interval. A non-finite loss stops the run, naming its step."""
    losses = torch.stack(step_losses)
    if procs.ddp:
        dist.all_reduce(losses, op=dist.ReduceOp.AVG)
    values = losses.tolist()
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        raise UserError(f"the loss became {values[bad[0]]} at step {first_iter + bad[0]}; out_dir keeps the last "
                        "good checkpoint: lower --learning_rate or use --dtype=float32/bfloat16")
    return values


def main(argv: list[str]) -> int:
    given = configurator.load_overrides(TrainConfig, argv, verbose=is_rank0())
    cfg = configurator.check_bounds(TrainConfig(**given))
    out_dir, resuming = Path(cfg.out_dir), cfg.init_from == "resume"
    check_out_dir(out_dir, cfg)

    # ---- processes and devices ----
    procs = setup_processes(resolve_device(cfg.device), cfg.backend)
    device = procs.device
    if cfg.gradient_accumulation_steps % procs.world_size:
        raise UserError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({procs.world_size}): it counts micro-steps over all of them")
    accum_steps = cfg.gradient_accumulation_steps // procs.world_size  # micro-steps per process
    if device == "cpu":
        keep_freed_memory_for_reuse()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = device.startswith("cuda")  # TF32 on CUDA
    dtype = resolve_dtype(cfg.dtype, device, training=True)
    autocast = autocast_context(device, dtype)
    use_compile = device.startswith("cuda") if cfg.compile is None else cfg.compile
    torch.manual_seed(cfg.seed + procs.rank)
    tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size

    # ---- data ----
    data_dir = dataset_folder(cfg)
    meta = load_dataset_meta(data_dir, cfg.block_size)
    data = open_token_files(data_dir, meta["kind"])
    print0(f"dataset {data_dir.name}: {len(data['train']):,} train tokens, {len(data['val']):,} val tokens, "
           f"vocab {meta['vocab_size']}")

    # ---- model and optimizer ----
    raw_model, checkpoint = build_model(cfg, meta, given)  # the plain module: checkpoints, MFU
    raw_model.to(device)
    opt_name = choose_optimizer(cfg.optimizer, cfg.init_from, checkpoint)
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == "float16"))
    optimizers = build_optimizers(raw_model, opt_name, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2),
                                  cfg.muon_lr, cfg.muon_momentum, device, newton_schulz_dtype(dtype))
    print0(f"device {device}, dtype {dtype}, {procs.world_size} process(es), {tokens_per_iter:,} tokens per iteration")
    print0(f"model: {raw_model.num_params() / 1e6:.2f}M parameters, optimizer {opt_name}, compile {use_compile}")
    iter_num, best_val_loss = load_training_state(checkpoint, optimizers, scaler, procs.rank) if resuming \
        else (0, math.inf)
    checkpoint = None  # free memory
    model = torch.compile(raw_model) if use_compile else raw_model  # what the loop calls
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if device.startswith("cuda") else None)

    replacing = not resuming and any((out_dir / name).is_file() for name in CHECKPOINT_NAMES)  # --overwrite
    run_log = RunLog(out_dir / "log.jsonl", cfg, procs.master and (resuming or not cfg.eval_only), resuming, replacing)

    def save(name: str) -> None:
        """out_dir/name from rank 0 with every rank's RNG state (all ranks call it); the first one of a run
        replacing another deletes the earlier run's files."""
        states = [rng_state()] * procs.world_size  # this rank's; under DDP every rank's, gathered
        if procs.ddp:
            dist.all_gather_object(states, rng_state())
        if not procs.master:
            return
        save_checkpoint({
            "model": raw_model.state_dict(), "optimizer": optimizers[0].state_dict(),
            "muon": optimizers[1].state_dict() if len(optimizers) > 1 else None, "optimizer_name": opt_name,
            "dtype": dtype, "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "model_args": raw_model.model_args(), "tokenizer": meta["tokenizer"], "iter_num": iter_num,
            "best_val_loss": best_val_loss, "config": configurator.config_dict(cfg), "rng": states,
        }, out_dir / name)
        if run_log.replacing:
            for other in CHECKPOINT_NAMES:
                if other != name:
                    (out_dir / other).unlink(missing_ok=True)
            run_log.start()

    # ---- training loop ----
    stop = StopSignal(cfg.eval_only)
    peak_flops = device_peak_flops(device, dtype)
    batches = training_batches(data["train"], cfg.batch_size, cfg.block_size, cfg.seed, iter_num, accum_steps,
                               procs.rank * accum_steps, device, cfg.pack_examples)
    x, y, matches = next(batches)  # each next batch is fetched while the device computes the current one
    start_iter, signum, mfu, t_last = iter_num, 0, -1.0, time.perf_counter()
    step_losses: list[torch.Tensor] = []  # per-step losses on the device, read back at the next log step
    try:
        while True:
            lr_scale = lr_multiplier(iter_num, cfg.warmup_iters, cfg.lr_decay_iters, cfg.min_lr / cfg.learning_rate,
                                     cfg.lr_schedule) if cfg.decay_lr else 1.0
            set_lr(optimizers, lr_scale)
            last_iter = iter_num >= cfg.max_iters
            if iter_num % cfg.eval_interval == 0 or last_iter or cfg.eval_only:
                losses = estimate_loss(model, data, cfg, procs, autocast)
                val_bpb = bits_per_byte(losses["val"], meta["val_tokens"], meta["val_bytes"]) \
                    if meta.get("val_bytes") else None
                print0(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                       + (f", val bpb {val_bpb:.4f}" if val_bpb is not None else ""))
                run_log.record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "train_loss": losses["train"],
                                "val_loss": losses["val"], "val_bpb": val_bpb, "lr": cfg.learning_rate * lr_scale})
                # only evaluations that can save count toward the best: were the starting weights' val loss
                # the bar, a run that never beat it would end without best.pt
                if iter_num > start_iter and not cfg.eval_only and math.isfinite(losses["val"]):
                    improved = losses["val"] < best_val_loss
                    best_val_loss = min(best_val_loss, losses["val"])
                    names = ["ckpt.pt"] if cfg.keep_checkpoints != "best" else []
                    names += ["best.pt"] if cfg.keep_checkpoints != "latest" and improved else []
                    for name in names:
                        save(name)
                    if names:
                        print0(f"saved {' and '.join(names)} to {out_dir}")
            if cfg.eval_only or last_iter:
                break

            # one optimizer step over accum_steps micro-batches, gradients averaged over all processes
            loss_sum = torch.zeros((), device=device)
            for micro_step in range(accum_steps):
                last_micro = micro_step == accum_steps - 1
                with model.no_sync() if procs.ddp and not last_micro else nullcontext():  # all-reduce once
                    with autocast:
                        _, loss = model(x, y, matches=matches)
                    x, y, matches = next(batches)  # the host prepares the next batch while the device works
                    loss_sum += loss.detach()
                    scaler.scale(loss / accum_steps).backward()
            step_optimizers(optimizers, scaler, raw_model.parameters(), cfg.grad_clip)
            iter_num += 1
            step_losses.append(loss_sum / accum_steps)

            reading = any(iter_num % n == 0 for n in (cfg.log_interval, cfg.eval_interval)) or iter_num >= cfg.max_iters
            if reading:
                lossf = read_back(step_losses, procs, iter_num - len(step_losses) + 1)[-1]
                now = time.perf_counter()
                seconds, t_last = (now - t_last) / len(step_losses), now
                step_losses = []
                if iter_num - start_iter >= 5:  # the first steps compile and warm up
                    counted = (y >= 0).float().mean().item()  # the share the output layer runs on (QA: answers)
                    step_mfu = raw_model.estimate_mfu(tokens_per_iter / seconds / procs.world_size, peak_flops, counted)
                    mfu = step_mfu if mfu < 0 else 0.9 * mfu + 0.1 * step_mfu
                if iter_num % cfg.log_interval == 0:
                    print0(f"iter {iter_num}: loss {lossf:.4f}, time {seconds * 1000:.2f}ms, "
                           f"mfu {f'{mfu * 100:.2f}%' if mfu >= 0 else 'n/a'}, {tokens_per_iter / seconds:,.0f} tok/s")
                    run_log.record({"iter": iter_num, "tokens": iter_num * tokens_per_iter, "loss": lossf,
                                    "lr": cfg.learning_rate * lr_scale, "ms": seconds * 1000,
                                    "mfu": mfu if mfu >= 0 else None})

            # under DDP every process must agree to stop, or the next collective would hang: they agree at read-backs
            signum = stop.agreed(procs) if reading or not procs.ddp else 0
            if signum:
                if step_losses:  # never save weights that a pending non-finite loss has spoilt
                    read_back(step_losses, procs, iter_num - len(step_losses) + 1)
                save("ckpt.pt")
                print0(f"stopped at iteration {iter_num}: checkpoint saved to {out_dir / 'ckpt.pt'}; "
                       "continue with --init_from=resume")
                break
    finally:
        stop.restore()
        run_log.close()
    if procs.ddp:
        dist.destroy_process_group()
    return 128 + signum if signum else 0


if __name__ == "__main__":
    sys.exit(run_main(main, memory_hint="use a smaller --batch_size or --block_size (raise "
                      "--gradient_accumulation_steps to keep the tokens per iteration), or a smaller model"))
