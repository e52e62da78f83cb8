"""
Benchmarks: training and sampling speed for named model sizes, on this machine's device.

    python bench.py                                  # CPU: quickstart and char models, a table and bench.json
    python bench.py --models=quickstart,char,gpt2 --device=cuda
    python bench.py --compare_nanogpt=../nanoGPT --data_dir=/tmp/passages   # quick start side by side with nanoGPT
    python bench.py --models= --retrieval=../shared/kazqad                 # BM25 analyzers on every KazQAD question
    KAZQAD_SOURCE=../shared/kazqad python bench.py --models= --qa_seeds=0,1,2   # make qa's recipe, three seeds

Training rows: ms per iteration (forward, backward, clip, optimizer step, batch loading), tokens/s,
MFU against the device's peak (data-sheet bf16 figures for A100/H100/H200, otherwise a measured
large matmul), the share of each iteration spent getting the batch, and the clip and optimizer step
alone (ms and share of the iteration; --optimizer=muon against --optimizer=adamw gives Muon's
cost). Sampling rows: prefill tokens/s, per-token decode with the KV cache, and 500 new tokens with
the cache against full recomputation (block 256, so the window slides), with the ratio. Retrieval
rows: recall@1, recall@5 and MRR@10 of every question's own passage among every passage of a KazQAD
source, for the shipped analyzer and for it without stemming, without stop words, and with other
stem lengths, with index build time and questions per second. The nanoGPT comparison: both quick
starts one after the other (wall, training time, whole-val loss curve, time to nanoGPT's final
loss), then the cost of one training step of each, forward and backward apart from the optimizer,
with the two repos' steps taking turns so that a machine whose speed drifts slows both alike. The QA
recipe: `make qa` once per seed (pretraining, finetuning data and finetuning all seeded), with each
mode's EM/F1 per seed, their mean and range, and each run's wall time: one question moves F1 by
about 1.4 points, so a change counts only if it beats the range.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from configurator import read_config_file
from kazgpt.checkpoint import model_from_checkpoint
from kazgpt.cli import ArgumentParser, UserError, bounded, run_main
from kazgpt.dataset import REPO_ROOT, batch_generator, get_batch, load_dataset_meta
from kazgpt.files import write_text
from kazgpt.kazqad import read_kazqad_examples
from kazgpt.device import (DTYPES, autocast_context, device_peak_flops, keep_freed_memory_for_reuse, resolve_device,
                           resolve_dtype, synchronize)
from kazgpt.optim import OPTIMIZERS, build_optimizers, newton_schulz_dtype, step_optimizers
from kazgpt.engine import decode_one_token, generate_tokens, generate_without_cache, prefill
from model import ARCHITECTURES, GPT, GPTConfig, KVCache


@dataclass
class BenchModel:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int
    iters: int  # timed training iterations by default: enough for a stable median, little enough for a CPU
    mlp_ratio: float = GPTConfig.mlp_ratio

    def model(self, architecture: str) -> GPT:
        return GPT(GPTConfig(block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
                             n_head=self.n_head, n_embd=self.n_embd, mlp_ratio=self.mlp_ratio, bias=False,
                             **ARCHITECTURES[architecture]))


# the MLP width of config/train_qazdata_char.py, which the README's quick start trains with too
CHAR_MLP_RATIO = read_config_file(str(REPO_ROOT / "config" / "train_qazdata_char.py")).get("mlp_ratio",
                                                                                            GPTConfig.mlp_ratio)
MODELS = {
    "quickstart": BenchModel(4, 4, 128, 64, 12, 256, 50, CHAR_MLP_RATIO),  # the README's CPU quick start
    "char": BenchModel(6, 6, 384, 256, 64, 256, 8, CHAR_MLP_RATIO),  # config/train_qazdata_char.py
    "gpt2": BenchModel(12, 12, 768, 1024, 12, 50304, 20),  # config/train_gpt2.py, per GPU
}


def bench_training(spec: BenchModel, device: str, dtype: str, use_compile: bool, iters: int, data: np.ndarray,
                   optimizer_name: str, architecture: str) -> dict:
    torch.manual_seed(0)
    model = spec.model(architecture).to(device)
    optimizers = build_optimizers(model, optimizer_name, 1e-3, 0.1, (0.9, 0.99), 0.02, 0.95, device,
                                  newton_schulz_dtype(dtype))
    step_model = torch.compile(model) if use_compile else model
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == "float16"))
    autocast = autocast_context(device, dtype)
    warmup = 3
    step_times, batch_times, optimizer_times = [], [], []
    for it in range(warmup + iters):
        synchronize(device)
        t0 = time.perf_counter()
        x, y, _ = get_batch(data, spec.batch_size, spec.block_size, batch_generator(0, it, 0), device)
        synchronize(device)
        t1 = time.perf_counter()
        with autocast:
            _, loss = step_model(x, y)
        scaler.scale(loss).backward()
        synchronize(device)
        t2 = time.perf_counter()
        step_optimizers(optimizers, scaler, model.parameters(), 1.0)
        loss.item()
        t3 = time.perf_counter()
        if it >= warmup:
            step_times.append(t3 - t0)
            batch_times.append(t1 - t0)
            optimizer_times.append(t3 - t2)
    ms = statistics.median(step_times) * 1000
    tokens_per_s = spec.batch_size * spec.block_size / (ms / 1000)
    return {"params_M": model.num_params() / 1e6, "ms_per_iter": ms, "tokens_per_s": tokens_per_s,
            "flops_per_s": model.flops_per_token() * tokens_per_s, "batch_share": sum(batch_times) / sum(step_times),
            # clipping and the optimizer step: how much of the iteration the optimizer recipe costs
            "optimizer_ms": statistics.median(optimizer_times) * 1000,
            "optimizer_share": sum(optimizer_times) / sum(step_times)}


@torch.no_grad()
def bench_sampling(spec: BenchModel, device: str, dtype: str, architecture: str, new_tokens: int = 500,
                   prompt_len: int = 16) -> dict:
    torch.manual_seed(0)
    model = spec.model(architecture).to(device).eval()
    autocast = autocast_context(device, dtype)
    idx = torch.randint(0, spec.vocab_size, (1, prompt_len), device=device)
    full_ctx = torch.randint(0, spec.vocab_size, (1, spec.block_size), device=device)

    def timed(fn, repeats=3):
        fn()
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            out = fn()
            synchronize(device)
            best = min(best, time.perf_counter() - t0)
        return best, out

    with autocast:
        cache = KVCache(model.config, 1, device, DTYPES[dtype])
        t_prefill, _ = timed(lambda: prefill(model, full_ctx, cache))

        def decode_steps():
            n = min(64, spec.block_size - prompt_len)  # as many steps as the cache has room for
            prefill(model, idx, cache)
            tok = idx[:, -1:]
            for _ in range(n):
                decode_one_token(model, tok, cache)
            return n

        t_decode, n = timed(decode_steps)
        cached_run = lambda: torch.cat([idx, *generate_tokens(model, idx, new_tokens, greedy=True)], 1)
        t_cached, cached = timed(cached_run, repeats=1)
        t_full, full = timed(lambda: generate_without_cache(model, idx, new_tokens, greedy=True), repeats=1)
    return {"prefill_tokens_per_s": spec.block_size / t_prefill, "decode_tokens_per_s": n / t_decode,
            "cached_500_s": t_cached, "recompute_500_s": t_full, "kv_speedup": t_full / t_cached,
            "same_tokens": bool(torch.equal(cached, full))}


QUICK_START_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                     "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                     "--lr_decay_iters=2000", "--dropout=0.0"]  # the README's CPU quick start
# both runs evaluate every 100 iterations (their char configs: 250), for a finer time to loss: the same
# evaluations on both sides, and their time is left out of the training time
EVAL_INTERVAL = 100
# Each repo's checkpoint writer, wrapped so that every eval leaves ckpt-<iteration>.pt (nothing else changes):
# the whole-val curve is scored from those files after the run.
SNAPSHOTS = {
    "nanogpt": "import torch\nsave = torch.save\ntorch.save = lambda obj, f, *a, **k: "
               "save(obj, str(f).replace('ckpt.pt', 'ckpt-%d.pt' % obj['iter_num']), *a, **k)\n",
    "kazgpt": "import kazgpt.checkpoint as c\nsave = c.save_checkpoint\nc.save_checkpoint = lambda obj, path: "
              "save(obj, path.with_name('ckpt-%d.pt' % obj['iter_num']))\n",
}
RUN_TRAIN_PY = "import runpy, sys\nsys.argv[0] = 'train.py'\nrunpy.run_path('train.py', run_name='__main__')\n"


def step_milliseconds(log: str, first_logged_step: int) -> list[float]:
    """Milliseconds of each optimizer step, in order, from a log's 'iter N: ... time Xms' lines.
    nanoGPT logs its first step as iter 0, this repo as iter 1 (first_logged_step). A step whose
    time includes an evaluation (the first after each eval) counts the median step time instead,
    so that the total is training time alone."""
    times = {int(n) + 1 - first_logged_step: float(ms)
             for n, ms in re.findall(r"^iter (\d+): .*?time ([\d.]+)ms", log, re.M)}
    if not times:
        return []
    median = statistics.median(times.values())
    return [median if step % EVAL_INTERVAL == 1 else times[step] for step in sorted(times)]


@torch.no_grad()
def full_val_loss(state_dict: dict, model_args: dict, val_path: Path) -> float:
    """Mean loss over every non-overlapping block_size window of val.bin, in float32 with this
    repo's GPT: the same windows for every model, so two runs compare without eval-batch noise
    (nanoGPT's parameter names and architecture are this GPT's)."""
    # nanoGPT's checkpoints name only its own fields: the rest are GPTConfig's defaults (GPT-2's, exact GELU)
    args = {k: v for k, v in model_args.items() if k in GPTConfig.__dataclass_fields__}
    weights = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    model = model_from_checkpoint({"model_args": args, "model": weights}).eval()
    val = torch.from_numpy(np.fromfile(val_path, dtype=np.uint16).astype(np.int64))
    T = args["block_size"]
    n = (len(val) - 1) // T
    x, y = val[: n * T].view(n, T), val[1 : n * T + 1].view(n, T)  # (n, T) windows and their targets
    total = sum(model(x[i : i + 64], y[i : i + 64])[1].item() * len(x[i : i + 64]) for i in range(0, n, 64))
    return total / n


def copy_nanogpt(nanogpt_dir: Path, data_dir: Path, into: Path) -> Path:
    """The nanoGPT files a run needs, with the prepared data as its dataset 'kazgpt_bench', in a
    temporary folder: nothing is written into the checkout."""
    import pickle  # nanoGPT's own metadata format, in the temporary copy only

    work = into / "nanogpt"
    (work / "data" / "kazgpt_bench").mkdir(parents=True)
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(nanogpt_dir / name, work / name)
    shutil.copytree(nanogpt_dir / "config", work / "config")
    for split in ("train", "val"):
        shutil.copy(data_dir / f"{split}.bin", work / "data" / "kazgpt_bench" / f"{split}.bin")
    with open(work / "data" / "kazgpt_bench" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": load_dataset_meta(data_dir, 64)["vocab_size"]}, f)
    return work


def run_quick_start(name: str, cmd: list[str], cwd: Path, out_dir: Path, first_logged_step: int,
                    val_path: Path) -> dict:
    """One repo's quick start: wall time, training time (evaluations excluded), and the whole-val
    loss of the checkpoint at every eval with the training time it took to get there."""
    print(f"running {name}: train.py {' '.join(cmd)}", file=sys.stderr)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SNAPSHOTS[name] + RUN_TRAIN_PY, *cmd], cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1:] or ["no error output"]
        raise UserError(f"{name}'s run failed (exit {proc.returncode}): {last[0]}")
    steps_ms = step_milliseconds(proc.stdout, first_logged_step)
    checkpoints = sorted(out_dir.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    curve = []
    for path in checkpoints:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        it = int(ckpt["iter_num"])
        loss = full_val_loss(ckpt["model"], ckpt["model_args"], val_path)
        curve.append({"iter": it, "train_s": sum(steps_ms[:it]) / 1000, "full_val_loss": loss})
    dtype = re.search(r"^device \S+, dtype (\w+)", proc.stdout, re.M)  # this repo's line; nanoGPT prints none
    return {"wall_s": wall, "train_s": sum(steps_ms) / 1000, "median_ms": statistics.median(steps_ms),
            "dtype": dtype.group(1) if dtype else None,
            "full_val_loss": curve[-1]["full_val_loss"], "curve": curve}


def compare_nanogpt(nanogpt_dir: Path, data_dir: Path, optimizer: str, architecture: str) -> dict:
    """The README quick start with nanoGPT's train.py and this repo's, one after the other, on the
    same train.bin/val.bin. Every eval's checkpoint is scored on the whole val set (every
    non-overlapping window, the same for both), which gives each run's final loss and the
    training time at which this repo first reaches nanoGPT's final loss."""
    vocab_size = load_dataset_meta(data_dir, 64)["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nano = copy_nanogpt(nanogpt_dir, data_dir, tmp)
        step_cost = interleaved_step_costs(nano, vocab_size, optimizer, architecture)  # first: it fails fast
        flags = [*QUICK_START_FLAGS, f"--eval_interval={EVAL_INTERVAL}"]
        ours = [f"--optimizer={optimizer}", *(f"--{k}={v}" for k, v in ARCHITECTURES[architecture].items())]
        results = {
            # nanoGPT saves a checkpoint only when val improves unless always_save_checkpoint: its final model too
            "nanogpt": run_quick_start("nanogpt", ["config/train_shakespeare_char.py", "--dataset=kazgpt_bench",
                                                   "--always_save_checkpoint=True", f"--out_dir={tmp / 'nano'}",
                                                   *flags],
                                       nano, tmp / "nano", 0, data_dir / "val.bin"),
            "kazgpt": run_quick_start("kazgpt", ["config/train_qazdata_char.py", f"--data_dir={data_dir}",
                                                 f"--out_dir={tmp / 'ours'}", *ours, *flags],
                                      REPO_ROOT, tmp / "ours", 1, data_dir / "val.bin"),
        }
    target = results["nanogpt"]["full_val_loss"]
    reached = [p for p in results["kazgpt"]["curve"] if p["full_val_loss"] <= target]
    results["time_to_nanogpt_loss_s"] = reached[0]["train_s"] if reached else None
    results["time_to_nanogpt_loss_ratio"] = reached[0]["train_s"] / results["nanogpt"]["train_s"] if reached else None
    # the same crossing priced at the step costs measured with the repos taking turns, which a machine
    # whose speed drifts between the two runs slows alike: (crossing iteration x our step) / (its steps x its step)
    results["crossing_iter"] = reached[0]["iter"] if reached else None
    step_ratio = step_cost[f"kazgpt ({optimizer}, {architecture})"]["ratio"]
    results["time_to_nanogpt_loss_ratio_interleaved"] = \
        reached[0]["iter"] / results["nanogpt"]["curve"][-1]["iter"] * step_ratio if reached else None
    results["train_ratio"] = results["kazgpt"]["train_s"] / results["nanogpt"]["train_s"]
    results["wall_ratio"] = results["kazgpt"]["wall_s"] / results["nanogpt"]["wall_s"]
    results["step_cost"] = step_cost
    return results


def nanogpt_step(nanogpt_copy: Path, config: dict) -> tuple:
    """nanoGPT's model and optimizer at the quick start's size, from the temporary copy of its files
    (its prints silenced), as (model, optimizer step) the way its train.py runs them on a CPU."""
    # imported under a name of its own: 'model' is this repo's
    shutil.copy(nanogpt_copy / "model.py", nanogpt_copy / "nanogpt_model.py")
    sys.path.insert(0, str(nanogpt_copy))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module = importlib.import_module("nanogpt_model")
            model = module.GPT(module.GPTConfig(**config, bias=False, dropout=0.0))
            optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    finally:
        sys.path.remove(str(nanogpt_copy))

    def optimize(loss: torch.Tensor) -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return model, optimize


def kazgpt_step(config: dict, optimizer: str, architecture: str, mlp_ratio: float) -> tuple:
    """This repo's model and optimizers at the same size (but for the MLP's width), as (model, optimizer step)."""
    model = GPT(GPTConfig(**config, mlp_ratio=mlp_ratio, bias=False, **ARCHITECTURES[architecture]))
    optimizers = build_optimizers(model, optimizer, 1e-3, 0.1, (0.9, 0.99), 0.01, 0.95, "cpu")
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def optimize(loss: torch.Tensor) -> None:
        step_optimizers(optimizers, scaler, model.parameters(), 1.0)
        loss.item()

    return model, optimize


def interleaved_step_costs(nanogpt_copy: Path, vocab_size: int, optimizer: str, architecture: str,
                           rounds: int = 12, steps: int = 10) -> dict:
    """Milliseconds per training step of the quick-start model, forward and backward apart from the
    optimizer step, for nanoGPT, this repo's recipe, and this repo with nanoGPT's recipe (AdamW, GPT-2's
    architecture and MLP width): the three take turns, `steps` steps each (the first two not timed), so that a
    machine whose speed drifts during a run slows all three alike. Medians over every timed step."""
    torch.manual_seed(0)
    config = {"block_size": 64, "vocab_size": vocab_size, "n_layer": 4, "n_head": 4, "n_embd": 128}
    x, y = (torch.randint(0, vocab_size, (12, 64)) for _ in range(2))
    variants = {"nanogpt": nanogpt_step(nanogpt_copy, config),
                f"kazgpt ({optimizer}, {architecture})": kazgpt_step(config, optimizer, architecture, CHAR_MLP_RATIO),
                "kazgpt (adamw, gpt2)": kazgpt_step(config, "adamw", "gpt2", GPTConfig.mlp_ratio)}
    times = {name: ([], []) for name in variants}
    for _ in range(rounds):
        for name, (model, optimize) in variants.items():
            for i in range(steps):
                t0 = time.perf_counter()
                _, loss = model(x, y)
                loss.backward()
                t1 = time.perf_counter()
                optimize(loss)
                if i >= 2:
                    times[name][0].append(t1 - t0)
                    times[name][1].append(time.perf_counter() - t1)
    costs = {name: {"forward_backward_ms": statistics.median(fb) * 1000, "optimizer_ms": statistics.median(opt) * 1000,
                    "step_ms": statistics.median([a + b for a, b in zip(fb, opt)]) * 1000}
             for name, (fb, opt) in times.items()}
    for c in costs.values():
        c["ratio"] = c["step_ms"] / costs["nanogpt"]["step_ms"]
    return costs


def print_comparison(c: dict) -> None:
    print(f"\nquick start, 2000 iterations {'wall':>9s} {'train':>8s} {'median ms':>10s} {'whole val':>10s}")
    for name in ("nanogpt", "kazgpt"):
        r = c[name]
        print(f"{name:28s} {r['wall_s']:8.1f}s {r['train_s']:7.1f}s {r['median_ms']:10.2f} {r['full_val_loss']:10.4f}")
    print(f"{'ratio kazgpt/nanogpt':28s} {c['wall_ratio']:8.2f}x {c['train_ratio']:7.2f}x")
    print(f"kazgpt trained in {c['kazgpt'].get('dtype')}; nanoGPT's train.py uses no autocast on a CPU (float32)")
    for name in ("nanogpt", "kazgpt"):
        print(f"{name} whole-val curve: " + ", ".join(f"{p['iter']}: {p['full_val_loss']:.4f} ({p['train_s']:.1f}s)"
                                                       for p in c[name]["curve"]))
    header = f"{'fwd+bwd ms':>11s} {'optimizer ms':>13s} {'step ms':>8s} {'ratio':>6s}"
    print(f"\nper step, interleaved on one batch {header}")
    for name, r in c["step_cost"].items():
        print(f"{name:34s} {r['forward_backward_ms']:11.2f} {r['optimizer_ms']:13.2f} {r['step_ms']:8.2f} "
              f"{r['ratio']:5.2f}x")
    if c["time_to_nanogpt_loss_s"] is None:
        print(f"kazgpt did not reach nanoGPT's final whole-val loss {c['nanogpt']['full_val_loss']:.4f}")
    else:
        print(f"time to nanoGPT's final whole-val loss {c['nanogpt']['full_val_loss']:.4f}: "
              f"{c['time_to_nanogpt_loss_s']:.1f}s of training, {c['time_to_nanogpt_loss_ratio']:.2f}x nanoGPT's; "
              f"at the interleaved step costs (iteration {c['crossing_iter']}): "
              f"{c['time_to_nanogpt_loss_ratio_interleaved']:.2f}x")


def run_tables(names: list[str], args, device: str, train_dtype: str, sample_dtype: str, results: dict) -> None:
    """The training and sampling rows for the named model sizes, printed and added to results."""
    info = results["info"]
    with tempfile.TemporaryDirectory() as tmp:
        # random tokens on disk: get_batch reads a memmap exactly as in training
        path = Path(tmp) / "tokens.bin"
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:  # in small pieces: freeing one large block would change how glibc's malloc behaves
            for _ in range(32):
                rng.integers(0, 245, 65_536, dtype=np.uint16).tofile(f)
        data = np.memmap(path, dtype=np.uint16, mode="r")
        for name in names:
            results["training"][name] = bench_training(MODELS[name], device, train_dtype, args.compile,
                                                       args.iters or MODELS[name].iters, data, args.optimizer,
                                                       args.architecture)
    # the peak is measured after the timed steps: its large matmul would change how glibc's malloc behaves
    peak = device_peak_flops(device, train_dtype)
    info["peak_tflops"] = peak / 1e12
    print(f"\n{'training':12s} {'params':>8s} {'ms/iter':>9s} {'tokens/s':>10s} {'MFU':>7s} {'batch share':>12s}"
          f" {'optimizer ms':>13s} {'share':>6s}   peak {peak / 1e12:.2f} TFLOP/s")
    for name, r in results["training"].items():
        r["mfu"] = r["flops_per_s"] / peak
        print(f"{name:12s} {r['params_M']:7.2f}M {r['ms_per_iter']:9.2f} {r['tokens_per_s']:10,.0f} "
              f"{r['mfu'] * 100:6.1f}% {r['batch_share'] * 100:11.2f}% {r['optimizer_ms']:13.2f} "
              f"{r['optimizer_share'] * 100:5.1f}%")
    print(f"\n{'sampling':12s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'500 cached':>11s} "
          f"{'500 recompute':>14s} {'ratio':>6s} {'same tokens':>12s}")
    for name in names:
        r = bench_sampling(MODELS[name], device, sample_dtype, args.architecture, args.new_tokens)
        results["sampling"][name] = r
        print(f"{name:12s} {r['prefill_tokens_per_s']:14,.0f} {r['decode_tokens_per_s']:13,.0f} "
              f"{r['cached_500_s']:10.2f}s "
              f"{r['recompute_500_s']:13.2f}s {r['kv_speedup']:5.1f}x {str(r['same_tokens']):>12s}")


def bench_retrieval(splits: dict[str, list[dict]], source: str) -> dict[str, dict]:
    """Retrieval quality and speed of analyzer variants, on every question of a KazQAD source (its
    examples by split, as read_kazqad_examples gives them)."""
    from functools import partial

    from kazgpt.kazqad import passage_key
    from kazgpt.retrieval import STEM_LENGTH, PassageIndex, analyze, passages_of

    passages = passages_of(splits)
    position = {(p.title, p.text): i for i, p in enumerate(passages)}
    rows = [r for split in splits.values() for r in split]
    variants = {f"shipped (stop words, first {STEM_LENGTH} letters)": analyze,
                "no stop words": partial(analyze, stopwords=frozenset()),
                "whole words": partial(analyze, stem_length=None),
                "whole words, no stop words": partial(analyze, stem_length=None, stopwords=frozenset()),
                **{f"first {n} letters": partial(analyze, stem_length=n) for n in (4, 6, 7)}}
    results = {}
    for name, analyzer in variants.items():
        t0 = time.perf_counter()
        index = PassageIndex.build(passages, analyzer)
        t1 = time.perf_counter()
        ranks = []
        for row in rows:
            found = [i for i, _ in index.search(row["question"], 10)]
            gold = position[passage_key(row)]
            ranks.append(found.index(gold) + 1 if gold in found else None)
        t2 = time.perf_counter()
        results[name] = {"recall@1": float(np.mean([r == 1 for r in ranks])),
                         "recall@5": float(np.mean([r is not None and r <= 5 for r in ranks])),
                         "mrr@10": float(np.mean([1 / r if r else 0.0 for r in ranks])),
                         "build_s": t1 - t0, "questions_per_s": len(rows) / (t2 - t1)}
    print(f"\nBM25 over {len(passages)} passages, {len(rows)} questions ({source})")
    print(f"{'analyzer':42s} {'R@1':>6s} {'R@5':>6s} {'MRR@10':>7s} {'build s':>8s} {'q/s':>7s}")
    for name, r in results.items():
        print(f"{name:42s} {r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['mrr@10']:7.3f} {r['build_s']:8.2f} "
              f"{r['questions_per_s']:7.0f}")
    return results


def bench_qa_recipe(seeds: list[int], dtype: str | None = None) -> dict:
    """`make qa` with each seed (runs in out-qa-seed<N>; in dtype where given, else the machine's default),
    and each mode's EM/F1 over the questions asked, per seed and as mean and range."""
    runs = {}
    for seed in seeds:
        out = f"out-qa-seed{seed}"
        print(f"\nmake qa SEED={seed} QA_OUT={out}", flush=True)
        began = time.perf_counter()
        subprocess.run(["make", "qa", f"SEED={seed}", f"QA_OUT={out}", f"PYTHON={sys.executable}",
                        f"DTYPE={dtype or ''}"], cwd=REPO_ROOT, check=True)
        rows = [json.loads(line) for line in (REPO_ROOT / out / "eval_qa_validation.jsonl").read_text().splitlines()]
        scores = {mode: {m: round(100 * statistics.mean(r[m] for r in rows if r["mode"] == mode), 1)
                         for m in ("em", "f1")} for mode in dict.fromkeys(r["mode"] for r in rows)}
        runs[seed] = {"wall_s": round(time.perf_counter() - began), **scores}
    summary = {mode: {m: {"mean": round(statistics.mean(runs[s][mode][m] for s in seeds), 1),
                          "min": min(runs[s][mode][m] for s in seeds), "max": max(runs[s][mode][m] for s in seeds)}
                      for m in ("em", "f1")} for mode in runs[seeds[0]] if mode != "wall_s"}
    print(f"\nmake qa over seeds {', '.join(map(str, seeds))}:\n{'mode':12s} {'EM mean':>8s} {'F1 mean':>8s} "
          f"{'F1 min':>7s} {'F1 max':>7s}   per seed F1")
    for mode, s in summary.items():
        print(f"{mode:12s} {s['em']['mean']:8.1f} {s['f1']['mean']:8.1f} {s['f1']['min']:7.1f} {s['f1']['max']:7.1f}   "
              + ", ".join(f"{runs[seed][mode]['f1']:.1f}" for seed in seeds))
    print("wall time per run: " + ", ".join(f"{runs[s]['wall_s']} s" for s in seeds))
    return {"runs": runs, "summary": summary}


def check_args(args, names: list[str]) -> None:
    """Everything a run needs, checked before minutes of work."""
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise UserError(f"unknown model '{unknown[0]}': choose from {', '.join(MODELS)} (or --models= for none)")
    if args.compare_nanogpt:
        if not (Path(args.compare_nanogpt) / "train.py").is_file():
            raise UserError(f"--compare_nanogpt {args.compare_nanogpt} is not a nanoGPT checkout (no train.py)")
        if not args.data_dir:
            raise UserError("--compare_nanogpt needs --data_dir: a folder prepared by data/qazdata_char/prepare.py")
        load_dataset_meta(Path(args.data_dir), 64)  # an unprepared folder is refused now, not after the tables


def main(argv: list[str]) -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--models", default="quickstart,char", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--compile", action="store_true", help="compile the training step")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="muon",
                        help="the optimizer recipe of the training rows and of this repo's quick start")
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default="newer",
                        help="newer (train.py's from scratch: rotary positions, ReLU squared, QK-norm) or gpt2")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed training iterations per model (default: each model's own)")
    parser.add_argument("--new_tokens", type=bounded(int, "--new_tokens", min=1), default=500,
                        help="tokens the sampling rows generate, with the cache and without")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--compare_nanogpt", default=None,
                        help="a nanoGPT checkout: also run the quick start side by side")
    parser.add_argument("--data_dir", default=None, help="prepared char-level data for --compare_nanogpt")
    parser.add_argument("--retrieval", default=None, help="a KazQAD source: also compare BM25 analyzers on it")
    parser.add_argument("--qa_seeds", default=None, help="comma-separated seeds: run make qa's recipe with each")
    parser.add_argument("--malloc", choices=("reuse", "glibc"), default="reuse",
                        help="on CPU: keep freed memory for the next step as train.py does (reuse), "
                        "or glibc's defaults")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    check_args(args, names)
    try:
        qa_seeds = [int(s) for s in args.qa_seeds.split(",") if s] if args.qa_seeds else []
    except ValueError:
        raise UserError(f"--qa_seeds must be comma-separated integers, e.g. 0,1,2; got '{args.qa_seeds}'") from None
    # read before the tables, which take minutes: a source that does not parse is refused at once
    retrieval_examples = read_kazqad_examples(args.retrieval) if args.retrieval else None
    device = resolve_device(args.device)
    train_dtype = resolve_dtype(args.dtype, device, training=True)
    sample_dtype = resolve_dtype(args.dtype, device)

    if device == "cpu" and args.malloc == "reuse":
        keep_freed_memory_for_reuse()
    info = {"date": time.strftime("%Y-%m-%d"), "device": device, "optimizer": args.optimizer,
            "architecture": args.architecture, "train_dtype": train_dtype,
            "sample_dtype": sample_dtype, "compile": args.compile,
            "malloc": args.malloc if device == "cpu" else None, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()}
    print(f"{info['device_name']} ({device}, torch {torch.__version__}, {info['threads']} threads)")
    print(f"training in {train_dtype}, sampling in {sample_dtype}"
          + (f", malloc {args.malloc}" if device == "cpu" else ""))
    results = {"info": info, "training": {}, "sampling": {}}
    if names:
        run_tables(names, args, device, train_dtype, sample_dtype, results)
    if args.compare_nanogpt:
        c = compare_nanogpt(Path(args.compare_nanogpt), Path(args.data_dir), args.optimizer, args.architecture)
        results["vs_nanogpt"] = c
        print_comparison(c)
    if args.retrieval:
        results["retrieval"] = bench_retrieval(retrieval_examples, args.retrieval)
    if args.qa_seeds:
        results["qa_recipe"] = bench_qa_recipe(qa_seeds, args.dtype)
    out = Path(args.json)
    write_text(out, json.dumps(results, indent=1))
    print(f"\nwrote {out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "CPU"


if __name__ == "__main__":
    sys.exit(run_main(main))
