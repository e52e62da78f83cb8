"""
Benchmarks: training and sampling speed for named model sizes, on this machine's device.

    python bench.py                                  # CPU: quickstart and char models, a table and bench.json
    python bench.py --models=quickstart,char,gpt2 --device=cuda
    python bench.py --compare_nanogpt=../nanoGPT --data_dir=/tmp/passages   # quick start side by side with nanoGPT

Training rows: ms per iteration (forward, backward, clip, AdamW step, batch loading), tokens/s,
MFU against the device's peak (data-sheet bf16 figures for A100/H100/H200, otherwise a measured
large matmul) and the share of each iteration spent getting the batch. Sampling rows: prefill
tokens/s, per-token decode with the KV cache, and 500 new tokens with the cache against full
recomputation (block 256, so the window slides), with the ratio.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kazgpt.checkpoint import model_from_checkpoint
from kazgpt.cli import run_main
from kazgpt.dataset import REPO_ROOT, batch_generator, get_batch
from kazgpt.device import (DTYPES, autocast_context, device_peak_flops, keep_freed_memory_for_reuse, resolve_device,
                           resolve_dtype, synchronize)
from kazgpt.optim import OPTIMIZERS, build_optimizers
from model import GPT, GPTConfig, KVCache, decode_one_token, generate_tokens, generate_without_cache, prefill


@dataclass
class BenchModel:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    batch_size: int
    vocab_size: int
    iters: int  # timed training iterations by default: enough for a stable median, little enough for a CPU

    def model(self) -> GPT:
        return GPT(GPTConfig(block_size=self.block_size, vocab_size=self.vocab_size, n_layer=self.n_layer,
                             n_head=self.n_head, n_embd=self.n_embd, bias=False))


MODELS = {
    "quickstart": BenchModel(4, 4, 128, 64, 12, 256, 50),  # the README's CPU quick start
    "char": BenchModel(6, 6, 384, 256, 64, 256, 8),  # config/train_qazdata_char.py
    "gpt2": BenchModel(12, 12, 768, 1024, 12, 50304, 20),  # config/train_gpt2.py, per GPU
}


def bench_training(spec: BenchModel, device: str, dtype: str, use_compile: bool, iters: int, data: np.ndarray,
                   optimizer_name: str) -> dict:
    torch.manual_seed(0)
    model = spec.model().to(device)
    optimizers = build_optimizers(model, optimizer_name, 1e-3, 0.1, (0.9, 0.99), 0.02, 0.95, device)
    step_model = torch.compile(model) if use_compile else model
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == "float16"))
    autocast = autocast_context(device, dtype)
    warmup = 3
    step_times, batch_times = [], []
    for it in range(warmup + iters):
        synchronize(device)
        t0 = time.perf_counter()
        x, y = get_batch(data, spec.batch_size, spec.block_size, batch_generator(0, it, 0), device)
        synchronize(device)
        t1 = time.perf_counter()
        with autocast:
            _, loss = step_model(x, y)
        scaler.scale(loss).backward()
        for optimizer in optimizers:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for optimizer in optimizers:
            scaler.step(optimizer)
        scaler.update()
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.item()
        t2 = time.perf_counter()
        if it >= warmup:
            step_times.append(t2 - t0)
            batch_times.append(t1 - t0)
    ms = statistics.median(step_times) * 1000
    tokens_per_s = spec.batch_size * spec.block_size / (ms / 1000)
    return {"params_M": model.num_params() / 1e6, "ms_per_iter": ms, "tokens_per_s": tokens_per_s,
            "flops_per_s": model.flops_per_token() * tokens_per_s, "batch_share": sum(batch_times) / sum(step_times)}


@torch.no_grad()
def bench_sampling(spec: BenchModel, device: str, dtype: str, new_tokens: int = 500, prompt_len: int = 16) -> dict:
    torch.manual_seed(0)
    model = spec.model().to(device).eval()
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


def median_ms(log: str) -> float:
    return statistics.median(float(m) for m in re.findall(r"^iter \d+: .*?time ([\d.]+)ms", log, re.M))


def final_val(log: str) -> float:
    return float(re.findall(r"^step \d+: train loss [\d.]+, val loss ([\d.]+)", log, re.M)[-1])


@torch.no_grad()
def full_val_loss(state_dict: dict, model_args: dict, val_path: Path) -> float:
    """Mean loss over every non-overlapping block_size window of val.bin, in float32 with this
    repo's GPT: the same windows for every model, so two runs compare without eval-batch noise
    (nanoGPT's parameter names and architecture are this GPT's)."""
    args = {k: model_args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}
    args["gelu_approximate"] = model_args.get("gelu_approximate", "none")  # nanoGPT's: exact GELU
    weights = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    model = model_from_checkpoint({"model_args": args, "model": weights}).eval()
    val = torch.from_numpy(np.fromfile(val_path, dtype=np.uint16).astype(np.int64))
    T = args["block_size"]
    n = (len(val) - 1) // T
    x, y = val[: n * T].view(n, T), val[1 : n * T + 1].view(n, T)  # (n, T) windows and their targets
    total = sum(model(x[i : i + 64], y[i : i + 64])[1].item() * len(x[i : i + 64]) for i in range(0, n, 64))
    return total / n


def compare_nanogpt(nanogpt_dir: Path, data_dir: Path) -> dict:
    """The README quick start with this repo's train.py and nanoGPT's, one after the other, on
    the same train.bin/val.bin (nanoGPT reads them from its data/kazgpt_bench folder). Besides
    each run's last logged val loss (20 random batches), both final checkpoints are scored on
    the whole val set."""
    import pickle  # nanoGPT's own metadata format, written into nanoGPT's checkout only

    vocab = json.loads((data_dir / "meta.json").read_text())["vocab_size"]
    nano_data = nanogpt_dir / "data" / "kazgpt_bench"
    nano_data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        (nano_data / f"{split}.bin").write_bytes((data_dir / f"{split}.bin").read_bytes())
    with open(nano_data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": vocab}, f)
    flags = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
             "--batch_size=12",
             "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "nanogpt": ([sys.executable, "train.py", "config/train_shakespeare_char.py", "--dataset=kazgpt_bench",
                         f"--out_dir={tmp}/nano", *flags], nanogpt_dir),
            "kazgpt": ([sys.executable, "train.py", "config/train_qazdata_char.py", f"--data_dir={data_dir}",
                        f"--out_dir={tmp}/ours", *flags], REPO_ROOT),
        }
        for name, (cmd, cwd) in runs.items():
            print(f"running {name}: {' '.join(cmd[1:])}", file=sys.stderr)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
            ckpt_path = Path(tmp) / ("nano" if name == "nanogpt" else "ours") / "ckpt.pt"
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            results[name] = {"wall_s": wall, "median_ms": median_ms(proc.stdout), "val_loss": final_val(proc.stdout),
                             "full_val_loss": full_val_loss(ckpt["model"], ckpt["model_args"], data_dir / "val.bin"),
                             "ckpt_iter": int(ckpt["iter_num"])}
    results["wall_ratio"] = results["kazgpt"]["wall_s"] / results["nanogpt"]["wall_s"]
    results["median_ms_ratio"] = results["kazgpt"]["median_ms"] / results["nanogpt"]["median_ms"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="quickstart,char", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--compile", action="store_true", help="compile the training step")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="the training rows' optimizer recipe")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed training iterations per model (default: each model's own)")
    parser.add_argument("--json", default="bench.json", help="where to write the results")
    parser.add_argument("--compare_nanogpt", default=None,
                        help="a nanoGPT checkout: also run the quick start side by side")
    parser.add_argument("--data_dir", default=None, help="prepared char-level data for --compare_nanogpt")
    parser.add_argument("--malloc", choices=("reuse", "glibc"), default="reuse",
                        help="on CPU: keep freed memory for the next step as train.py does (reuse), "
                        "or glibc's defaults")
    args = parser.parse_args()
    device = resolve_device(args.device)
    train_dtype = resolve_dtype(args.dtype, device, training=True)
    sample_dtype = resolve_dtype(args.dtype, device)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]}: choose from {', '.join(MODELS)}")

    if device == "cpu" and args.malloc == "reuse":
        keep_freed_memory_for_reuse()
    info = {"date": time.strftime("%Y-%m-%d"), "device": device, "optimizer": args.optimizer,
            "train_dtype": train_dtype,
            "sample_dtype": sample_dtype, "compile": args.compile,
            "malloc": args.malloc if device == "cpu" else None, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else _cpu_name()}
    print(f"{info['device_name']} ({device}, torch {torch.__version__}, {info['threads']} threads)")
    print(f"training in {train_dtype}, sampling in {sample_dtype}"
          + (f", malloc {args.malloc}" if device == "cpu" else ""))
    results = {"info": info, "training": {}, "sampling": {}}
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
                                                       args.iters or MODELS[name].iters, data, args.optimizer)
    # the peak is measured after the timed steps: its large matmul would change how glibc's malloc behaves
    peak = device_peak_flops(device, train_dtype)
    info["peak_tflops"] = peak / 1e12
    print(f"\n{'training':12s} {'params':>8s} {'ms/iter':>9s} {'tokens/s':>10s} {'MFU':>7s} {'batch share':>12s}"
          f"   peak {peak / 1e12:.2f} TFLOP/s")
    for name, r in results["training"].items():
        r["mfu"] = r["flops_per_s"] / peak
        print(f"{name:12s} {r['params_M']:7.2f}M {r['ms_per_iter']:9.2f} {r['tokens_per_s']:10,.0f} "
              f"{r['mfu'] * 100:6.1f}% {r['batch_share'] * 100:11.2f}%")
    print(f"\n{'sampling':12s} {'prefill tok/s':>14s} {'decode tok/s':>13s} {'500 cached':>11s} "
          f"{'500 recompute':>14s} {'ratio':>6s} {'same tokens':>12s}")
    for name in names:
        r = bench_sampling(MODELS[name], device, sample_dtype)
        results["sampling"][name] = r
        print(f"{name:12s} {r['prefill_tokens_per_s']:14,.0f} {r['decode_tokens_per_s']:13,.0f} "
              f"{r['cached_500_s']:10.2f}s "
              f"{r['recompute_500_s']:13.2f}s {r['kv_speedup']:5.1f}x {str(r['same_tokens']):>12s}")
    if args.compare_nanogpt:
        if not args.data_dir:
            raise SystemExit("--compare_nanogpt needs --data_dir: a folder prepared by data/qazdata_char/prepare.py")
        c = compare_nanogpt(Path(args.compare_nanogpt), Path(args.data_dir))
        results["vs_nanogpt"] = c
        print(f"\nquick start, 2000 iterations: {'':8s} {'wall':>8s} {'median ms':>10s} {'val loss':>9s} "
              f"{'full val':>9s}")
        for name in ("nanogpt", "kazgpt"):
            r = c[name]
            print(f"{name:38s} {r['wall_s']:7.1f}s {r['median_ms']:10.2f} {r['val_loss']:9.4f} "
                  f"{r['full_val_loss']:9.4f}")
        print(f"{'ratio kazgpt/nanogpt':38s} {c['wall_ratio']:7.2f}x {c['median_ms_ratio']:9.2f}x")
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.json}")


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
    run_main(main)
