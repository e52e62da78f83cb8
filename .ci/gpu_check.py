"""The GPU checks of issue 13 in one call, on one CUDA GPU: every CUDA path of the repo run once with
the user's own commands, and what each gave recorded.

    OUT=/tmp/out python3 .ci/gpu_check.py                             # every check, on cuda (~10 min)
    python3 .ci/gpu_check.py --checks=char_config,precision,resume   # some of them
    python3 .ci/gpu_check.py --device=cpu --quick                    # the plumbing on a CPU, tiny sizes

Checks (in this order; --checks picks some):
  char_config  python train.py config/train_qazdata_char.py, as the README gives it: wall, ms/iter,
               final and best val loss, training time to its final val loss
  precision    100 steps in float32, bfloat16 and float16 (GradScaler), compile off: each loss curve
               against float32's, within the CPU test's 0.02
  compile      the bfloat16 run again with torch.compile: its losses against the eager run's
  adamw        the bfloat16 run with --optimizer=adamw (Muon is the default in the others)
  resume       40 steps straight against 20 + 20 resumed: the per-step losses of steps 21-40, identical?
  kv_cache     greedy tokens of char_config's model with the KV cache against recomputation, fp32 and bf16
  sample       sample.py --start="<question>:" on char_config's checkpoint
  eval_qa      eval_qa.py (closed-book and reading) on char_config's checkpoint, the first 50 questions
  ddp          torchrun --nproc_per_node=1 (NCCL) against one plain process: per-step losses
  decode       tokens/s of one-token decode steps at GPT-2 124M's size, eager against torch.compile
  throughput   bench.py --models=gpt2 --compile with AdamW and with Muon: ms/iter, tokens/s, MFU

It needs the char data prepared (python data/qazdata_char/prepare.py, or --data_dir=) and, for
eval_qa, a KazQAD source (--kazqad=, default $KAZQAD_SOURCE); python3 with torch, numpy, tqdm,
tiktoken, tokenizers and transformers (no datasets, wandb or bm25s). From a session with the
device tool, where ../shared does not travel: here,
    python data/qazdata_char/prepare.py --source=../shared/kazqad
    mkdir -p gpu-check && cp -r ../shared/kazqad gpu-check/
then run `python3 .ci/gpu_check.py --kazqad=gpu-check/kazqad --checks=...` carrying
data/qazdata_char and gpu-check, in two calls of under 10 minutes (the throughput check alone is
one). A failing check is recorded with the end of its output and the next one runs.
$OUT/gpu_check.json is rewritten after every check (so a run stopped at its time limit still leaves
what it saw), every command's output goes to $OUT/gpu_check.log, and a table is printed at the end.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from kazgpt.cli import ArgumentParser, UserError, run_main  # noqa: E402 (after the path that finds it)

CHECKS = ("char_config", "precision", "compile", "adamw", "resume", "kv_cache", "sample", "eval_qa", "ddp",
          "decode", "throughput")
TRACK_TOLERANCE = 0.02  # tests/test_train.py's bound on |bf16 loss - fp32 loss| over the first 100 steps
QUESTION = "Амазонка бассейні картада қайда орналасқан?:"
# --quick: the model of the CPU tests, so that every check runs in seconds on a CPU
QUICK_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32, "batch_size": 8, "eval_iters": 2,
               "compile": False}


class Checker:
    """Runs commands for the checks, logs their output, and keeps the results."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.out = Path(os.environ.get("OUT") or args.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log = open(self.out / "gpu_check.log", "a", encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot write results to {self.out} ({e.strerror or e}): set $OUT or --out") from None
        self.results: dict[str, dict] = {}
        self.eager_bf16: Optional[list[float]] = None  # the precision check's bf16 losses, for the compile check

    def run(self, *cmd: str, timeout: int = 600) -> str:
        """Run a command in the repo; its output goes to the log and is returned; a failure raises."""
        self.log.write(f"\n$ {' '.join(cmd)}\n")
        self.log.flush()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        self.log.write(proc.stdout + proc.stderr)
        self.log.flush()
        if proc.returncode:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise RuntimeError(f"exit {proc.returncode}: {' | '.join(tail)}")
        return proc.stdout

    def train(self, name: str, launcher: tuple = (sys.executable,), **config) -> list[dict]:
        """train.py with the char config and these keys into work/name; its log.jsonl entries."""
        out = self.work / name
        config = {**(QUICK_MODEL if self.args.quick else {}), **config}
        self.run(*launcher, "train.py", "config/train_qazdata_char.py", f"--data_dir={self.args.data_dir}",
                 f"--out_dir={out}", f"--device={self.args.device}", "--overwrite",
                 *(f"--{key}={value}" for key, value in config.items()))
        return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]

    def losses(self, name: str, steps: Optional[int] = None, **config) -> list[float]:
        """Per-step training losses of a short run (by default 100 steps, 20 with --quick), compile off
        unless config says."""
        steps = steps or (20 if self.args.quick else 100)
        config = {"max_iters": steps, "lr_decay_iters": steps, "eval_interval": steps, "eval_iters": 10,
                  "log_interval": 1, "compile": False, **config}
        return [e["loss"] for e in self.train(name, **config) if "loss" in e]

    def record(self, name: str, result: dict) -> None:
        self.results[name] = result
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, ensure_ascii=False))


def largest_gap(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise RuntimeError(f"the runs logged {len(a)} and {len(b)} steps")
    return max(abs(x - y) for x, y in zip(a, b))


def check_char_config(c: Checker) -> dict:
    t0 = time.perf_counter()
    quick = {"max_iters": 40, "lr_decay_iters": 40, "eval_interval": 10} if c.args.quick else {}
    entries = c.train("char", **quick)
    wall = time.perf_counter() - t0
    steps = [e for e in entries if "ms" in e]
    evals = [e for e in entries if "val_loss" in e]
    final = evals[-1]["val_loss"]
    reached = next(e["iter"] for e in evals if e["val_loss"] <= final)
    return {"wall_s": wall, "median_ms": statistics.median(e["ms"] for e in steps), "final_val_loss": final,
            "best_val_loss": min(e["val_loss"] for e in evals), "iters": evals[-1]["iter"],
            "train_s_to_final_val_loss": sum(e["ms"] for e in steps if e["iter"] <= reached) / 1000,
            "last_mfu": steps[-1].get("mfu")}


def lower_precisions(device: str) -> tuple[str, ...]:
    """The autocast dtypes the device can train in: bf16 and fp16 on CUDA; bf16 on a CPU with it."""
    from kazgpt.device import cpu_supports_bf16

    if device.startswith("cuda"):
        return ("bfloat16", "float16")
    return ("bfloat16",) if cpu_supports_bf16() else ()


def half(c: Checker) -> str:
    """The dtype of the compile and adamw runs: bf16 where the device has it (float32 for --quick on such a CPU)."""
    return "bfloat16" if "bfloat16" in lower_precisions(c.args.device) else "float32"


def check_precision(c: Checker) -> dict:
    dtypes = ("float32", *lower_precisions(c.args.device))
    losses = {dtype: c.losses(f"dtype-{dtype}", dtype=dtype) for dtype in dtypes}
    c.eager_bf16 = losses.get("bfloat16")
    gaps = {dtype: largest_gap(losses["float32"], losses[dtype]) for dtype in dtypes[1:]}
    return {"first_loss": losses["float32"][0], "last_loss_fp32": losses["float32"][-1],
            **{f"largest_gap_{d}": g for d, g in gaps.items()},
            "tracks": all(g < TRACK_TOLERANCE for g in gaps.values())}


def check_compile(c: Checker) -> dict:
    eager = c.eager_bf16 or c.losses("eager", dtype=half(c))
    t0 = time.perf_counter()
    compiled = c.losses("compiled", dtype=half(c), compile=True)
    gap = largest_gap(eager, compiled)
    return {"largest_gap": gap, "tracks": gap < TRACK_TOLERANCE, "wall_s": time.perf_counter() - t0}


def check_adamw(c: Checker) -> dict:
    losses = c.losses("adamw", dtype=half(c), optimizer="adamw")
    return {"first_loss": losses[0], "last_loss": losses[-1]}


def check_resume(c: Checker) -> dict:
    schedule = {"lr_decay_iters": 40, "eval_interval": 20}
    straight = c.losses("straight", steps=40, **schedule)
    c.losses("resumed", steps=20, **schedule)
    resumed = c.losses("resumed", steps=40, init_from="resume", **schedule)
    return {"identical": straight[20:] == resumed[20:], "largest_gap": largest_gap(straight[20:], resumed[20:])}


def check_kv_cache(c: Checker) -> dict:
    import torch

    from kazgpt.checkpoint import load_checkpoint, model_from_checkpoint
    from kazgpt.device import autocast_context
    from kazgpt.engine import generate_tokens, generate_without_cache

    model = model_from_checkpoint(load_checkpoint(c.work / "char" / "ckpt.pt")).to(c.args.device).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    idx = idx.to(c.args.device)
    new = 2 * model.config.block_size  # past the window, so that the sliding policy runs too
    result = {}
    for dtype in ("float32", "bfloat16"):
        with torch.no_grad(), autocast_context(c.args.device, dtype):
            cached = torch.cat(list(generate_tokens(model, idx, new, greedy=True)), dim=1)
            recomputed = generate_without_cache(model, idx, new, greedy=True)[:, idx.size(1):]
        same = cached == recomputed
        result[f"{dtype}_same_tokens"] = bool(same.all())
        result[f"{dtype}_first_difference"] = None if same.all() else int((~same).any(0).nonzero()[0])
    return result


def check_sample(c: Checker) -> dict:
    text = c.run(sys.executable, "sample.py", f"--out_dir={c.work / 'char'}", f"--device={c.args.device}",
                 f"--start={QUESTION}", "--num_samples=1", "--max_new_tokens=100")
    return {"output": [line for line in text.splitlines() if line.strip("- ")][-2:]}  # the sample, no rules


def check_eval_qa(c: Checker) -> dict:
    if not c.args.kazqad:
        raise RuntimeError("no KazQAD source: pass --kazqad= or set KAZQAD_SOURCE")
    text = c.run(sys.executable, "eval_qa.py", f"--out_dir={c.work / 'char'}", f"--device={c.args.device}",
                 f"--source={c.args.kazqad}", "--modes=closed_book,reading", "--limit=50",
                 f"--output={c.work / 'eval_qa.jsonl'}")
    return {"output": [line for line in text.splitlines() if line.startswith(("mode", "closed_book", "reading"))]}


def check_ddp(c: Checker) -> dict:
    single = c.losses("single", steps=20, dtype="float32")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1")
    ddp = c.losses("ddp", steps=20, dtype="float32", launcher=torchrun)  # NCCL on CUDA, gloo on CPU
    return {"largest_gap": largest_gap(single, ddp), "identical": single == ddp}


def check_decode(c: Checker) -> dict:
    import torch

    from kazgpt.device import autocast_context, synchronize
    from kazgpt.engine import decode_one_token, prefill
    from model import ARCHITECTURES, GPT, GPTConfig, KVCache

    size = dict(n_layer=2, n_head=2, n_embd=64) if c.args.quick else dict(n_layer=12, n_head=12, n_embd=768)
    model = GPT(GPTConfig(block_size=1024, vocab_size=50304, bias=False, **size, **ARCHITECTURES["newer"]))
    model = model.to(c.args.device).eval()
    dtype = "float32" if c.args.device == "cpu" else "bfloat16"
    steps = 16 if c.args.quick else 200
    result = {"dtype": dtype}
    for name, step in (("eager", decode_one_token), ("compiled", torch.compile(decode_one_token))):
        with torch.no_grad(), autocast_context(c.args.device, dtype):
            cache = KVCache(model.config, 1, c.args.device, torch.float32 if dtype == "float32" else torch.bfloat16)
            tokens = []
            for timed in (False, True):  # the first pass compiles
                token = prefill(model, torch.zeros(1, 16, dtype=torch.long, device=c.args.device), cache).argmax(-1)
                synchronize(c.args.device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    token = step(model, token[:, None], cache).argmax(-1)
                    tokens.append(int(token))
                synchronize(c.args.device)
            result[f"{name}_tokens_per_s"] = steps / (time.perf_counter() - t0)
            result[f"{name}_tokens"] = tokens[-steps:]
    result["same_tokens"] = result.pop("eager_tokens") == result.pop("compiled_tokens")
    return result


def check_throughput(c: Checker) -> dict:
    result = {}
    models, compile_flag = ("quickstart", []) if c.args.quick else ("gpt2", ["--compile"])
    for optimizer in ("adamw", "muon"):
        path = c.work / f"bench-{optimizer}.json"
        c.run(sys.executable, "bench.py", f"--device={c.args.device}", f"--models={models}", *compile_flag,
              f"--optimizer={optimizer}", f"--json={path}")
        bench = json.loads(path.read_text())
        training, sampling = bench["training"][models], bench["sampling"][models]
        result[optimizer] = {**{k: training[k] for k in ("ms_per_iter", "tokens_per_s", "mfu", "optimizer_share")},
                             **{k: sampling[k] for k in ("decode_tokens_per_s", "kv_speedup", "same_tokens")}}
        result["peak_tflops"], result["device_name"] = bench["info"]["peak_tflops"], bench["info"]["device_name"]
        result.setdefault("bench", {})[optimizer] = bench
    return result


def summary_line(name: str, result: dict) -> str:
    """One line per check: its figures (nested ones as a.b), its output's last line."""
    if "error" in result:
        return f"{name:12s} FAILED  {result['error'][:200]}"
    flat = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, list) and value and isinstance(value[-1], str):
            flat[key] = value[-1]
        else:
            flat[key] = value
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in flat.items()
             if not isinstance(v, (list, dict))}
    return f"{name:12s} ok      {json.dumps(shown, ensure_ascii=False)[:600]}"


def main(argv: list[str]) -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated, from " + ", ".join(CHECKS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data_dir", default=str(REPO / "data" / "qazdata_char"))
    parser.add_argument("--kazqad", default=os.environ.get("KAZQAD_SOURCE"))
    parser.add_argument("--out", default="gpu-check-out", help="where results go when $OUT is not set")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: try the plumbing on a CPU")
    args = parser.parse_args(argv)
    names = [n for n in args.checks.split(",") if n]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise UserError(f"unknown check {unknown[0]!r}: choose from {', '.join(CHECKS)}")
    if not (Path(args.data_dir) / "train.bin").is_file():
        raise UserError(f"{args.data_dir} holds no prepared data: run python data/qazdata_char/prepare.py first, "
                        "or pass --data_dir=")
    with tempfile.TemporaryDirectory() as tmp:
        checker = Checker(args, Path(tmp))
        for name in names:
            t0 = time.perf_counter()
            try:
                result = globals()[f"check_{name}"](checker)
            except Exception as e:  # recorded, and the next check runs
                result = {"error": f"{type(e).__name__}: {e}"}
            result["check_s"] = round(time.perf_counter() - t0, 1)
            checker.record(name, result)
            print(summary_line(name, result), flush=True)
    print(f"\nwrote {checker.out / 'gpu_check.json'} and gpu_check.log")


if __name__ == "__main__":
    sys.exit(run_main(main))
