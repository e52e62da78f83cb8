"""train.py and sample.py end to end, as a user runs them: prepare, train, checkpoint, resume,
sample; exact resume against an uninterrupted run; SIGTERM preemption."""
import math
import signal
import subprocess
import sys

import pytest
import torch

from kazgpt.device import cpu_supports_bf16
from model import ARCHITECTURES
from conftest import REPO, TINY_MODEL, prepare_char_dataset, read_log, run, wait_for_log_lines


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    """A char-level dataset prepared from a KazQAD-schema fixture (train and validation files)."""
    return prepare_char_dataset(tmp_path_factory.mktemp("qazdata"), 40)


def train(data_dir, out_dir, *extra, check=True):
    return run("train.py", "config/train_qazdata_char.py", f"--data_dir={data_dir}", f"--out_dir={out_dir}",
               *TINY_MODEL, *extra, check=check)


def test_quick_start_path(shared_kazqad, tmp_path):
    """prepare from ../shared/kazqad -> train -> checkpoint -> resume -> sample with --start."""
    data = tmp_path / "data"
    proc = run("data/qazdata_char/prepare.py", f"--source={shared_kazqad}", f"--out_dir={data}")
    assert "held out (about 10%, passages that share a question kept together)" in proc.stdout
    out = tmp_path / "out"
    proc = train(data, out, "--max_iters=40", "--lr_decay_iters=60", "--eval_interval=20")
    assert "iter 1: " in proc.stdout and "mfu n/a" in proc.stdout and "mfu -" not in proc.stdout  # not yet measured
    assert "iter 40: " in proc.stdout and "mfu n/a" not in proc.stdout.split("iter 40: ")[1].splitlines()[0]
    evals = [e for e in read_log(out) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0, evals  # from ~ln(vocab)=5.5 down
    assert (out / "ckpt.pt").exists() and (out / "best.pt").exists()
    args = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=True)["model_args"]
    assert {k: args[k] for k in ARCHITECTURES["newer"]} == ARCHITECTURES["newer"]  # from scratch: the newer one

    proc = train(data, out, "--init_from=resume", "--max_iters=60", "--lr_decay_iters=60", "--eval_interval=20")
    assert "resuming from" in proc.stdout and "iter 41:" in proc.stdout and "iter 1:" not in proc.stdout
    steps = [e["iter"] for e in read_log(out) if "loss" in e]
    assert steps == list(range(1, 61))

    question = "Амазонка бассейні картада қайда орналасқан?:"
    proc = run("sample.py", f"--out_dir={out}", "--device=cpu", f"--start={question}", "--num_samples=2",
               "--max_new_tokens=50")
    samples = proc.stdout.split("---------------")
    assert len(samples) == 3 and all(s.strip().startswith(question) for s in samples[:2])
    assert all(len(s.strip()) > len(question) + 20 for s in samples[:2])
    assert any("\u0400" <= c <= "\u04ff" for c in samples[0][len(question) + 1:])  # Cyrillic came out


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_exact_resume(char_data, tmp_path, optimizer):
    """Stopped at step 15 and resumed, a run logs the same per-step losses as an uninterrupted one,
    with either optimizer recipe (both optimizers' states are in the checkpoint). Dropout is on, so
    the RNG state must be restored too. The resumed run names no optimizer: it keeps the checkpoint's."""
    common = ["--dropout=0.1", "--lr_decay_iters=30", "--eval_interval=15"]
    full, split = tmp_path / "full", tmp_path / "split"
    train(char_data, full, "--max_iters=30", f"--optimizer={optimizer}", *common)
    train(char_data, split, "--max_iters=15", f"--optimizer={optimizer}", *common)
    proc = train(char_data, split, "--max_iters=30", "--init_from=resume", *common)
    assert f"optimizer {optimizer}" in proc.stdout
    losses = lambda out: {e["iter"]: e["loss"] for e in read_log(out) if "loss" in e}
    a, b = losses(full), losses(split)
    assert sorted(a) == sorted(b) == list(range(1, 31))
    assert max(abs(a[i] - b[i]) for i in a) <= 1e-6, [(i, a[i], b[i]) for i in a if a[i] != b[i]][:5]


def test_pre_muon_checkpoint_resumes_with_adamw(char_data, tmp_path):
    """A checkpoint written before the optimizer choice existed (AdamW state only, no name) resumes
    with AdamW; asking for Muon on it is refused in one line."""
    from kazgpt.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "out"
    train(char_data, out, "--max_iters=4", "--eval_interval=4", "--optimizer=adamw")
    ckpt = load_checkpoint(out / "ckpt.pt")
    old = {k: v for k, v in ckpt.items() if k not in ("version", "muon", "optimizer_name")}
    save_checkpoint(old, out / "ckpt.pt")
    proc = train(char_data, out, "--init_from=resume", "--max_iters=6", "--eval_interval=100")
    assert "optimizer adamw" in proc.stdout and "iter 6:" in proc.stdout
    refused = train(char_data, out, "--init_from=resume", "--optimizer=muon", "--max_iters=8", check=False)
    assert refused.returncode == 2 and "resume with --optimizer=adamw" in refused.stderr


def test_sigterm_saves_and_resumes(char_data, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "config/train_qazdata_char.py", f"--data_dir={char_data}", f"--out_dir={out}",
           *TINY_MODEL, "--max_iters=100000", "--eval_interval=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log_lines(out / "log.jsonl", 5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM received" in stderr and "checkpoint saved" in stdout
    last = max(e["iter"] for e in read_log(out) if "loss" in e)
    proc = train(char_data, out, "--init_from=resume", f"--max_iters={last + 3}", "--eval_interval=100000")
    assert f"resuming from {out / 'ckpt.pt'} at iteration {last}" in proc.stdout
    assert f"iter {last + 1}:" in proc.stdout


def test_batches_are_a_function_of_the_step():
    """Ranks draw different batches; the same (seed, step, micro-step) gives the same batch, so a
    resumed run continues the sequence instead of replaying it from step 0."""
    import numpy as np

    from kazgpt.dataset import batch_generator, get_batch

    data = np.arange(10_000, dtype=np.uint16)
    batch = lambda step, micro: get_batch(data, 4, 16, batch_generator(1337, step, micro), "cpu")[0]
    assert torch_equal(batch(7, 0), batch(7, 0))
    assert not torch_equal(batch(7, 0), batch(7, 1))  # rank 0 and rank 1 (1 micro-step each)
    assert not torch_equal(batch(7, 0), batch(0, 0))  # step 7 after a resume is not step 0 again
    x, y, _ = get_batch(data, 4, 16, batch_generator(1, 2, 3), "cpu")
    assert (y[:, :-1] == x[:, 1:]).all() and (y[:, -1] == x[:, -1] + 1).all()  # targets are inputs shifted by one


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_default_dtype_follows_the_cpus_bf16_instructions(monkeypatch):
    """On CPU, training defaults to bf16 only where the CPU has bf16 instructions; sampling stays
    fp32 (decode steps measured slower in bf16); an explicit --dtype always wins."""
    from kazgpt import device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)  # a Xeon with AMX
    assert device.resolve_dtype(None, "cpu", training=True) == "bfloat16"
    assert device.resolve_dtype(None, "cpu") == "float32"
    assert device.resolve_dtype("float32", "cpu", training=True) == "float32"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)  # bf16 emulated slower than fp32
    assert device.resolve_dtype(None, "cpu", training=True) == "float32"


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bfloat16 support")
def test_bf16_training_tracks_fp32(char_data, tmp_path):
    """bf16 autocast on CPU (attention kept in fp32) follows the fp32 run step by step for its
    first 100 steps. Later the two runs part the way runs with different seeds do (checked on
    KazQAD: 1000 steps, three seeds, no side ahead), so only the start is compared here."""
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        proc = train(char_data, out, f"--dtype={dtype}", "--max_iters=100", "--lr_decay_iters=100",
                     "--eval_interval=100")
        assert f"dtype {dtype}" in proc.stdout
        losses[dtype] = [e["loss"] for e in read_log(out) if "loss" in e]
    fp32, bf16 = losses["float32"], losses["bfloat16"]
    assert len(fp32) == len(bf16) == 100 and fp32[-1] < fp32[0] - 1.5  # it learned
    assert fp32 != bf16  # the two runs did use different arithmetic
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.02, [
        (i, a, b) for i, (a, b) in enumerate(zip(fp32, bf16)) if abs(a - b) >= 0.02
    ][:5]


@pytest.mark.parametrize("keep", ["best", "latest"])
def test_keep_checkpoints(char_data, tmp_path, keep):
    """keep_checkpoints='best' writes best.pt at an eval whose val loss is the lowest so far, and
    says so, and neither at the others; 'latest' writes ckpt.pt at every eval. A rate this high
    makes val rise at some evals, so both cases occur."""
    from kazgpt.checkpoint import load_checkpoint

    out = tmp_path / "out"
    proc = train(char_data, out, "--max_iters=12", "--eval_interval=2", f"--keep_checkpoints={keep}",
                 "--learning_rate=0.3", "--muon_lr=0.3")
    evals = [e for e in read_log(out) if "val_loss" in e and e["iter"] > 0]
    saves = proc.stdout.count(f"saved {'best.pt' if keep == 'best' else 'ckpt.pt'} to")
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt" if keep == "best" else "ckpt.pt"]
    if keep == "latest":
        assert saves == len(evals) and load_checkpoint(out / "ckpt.pt")["iter_num"] == 12
        return
    improving = [e for i, e in enumerate(evals) if e["val_loss"] < min([math.inf] + [p["val_loss"] for p in evals[:i]])]
    assert 0 < len(improving) < len(evals)
    assert saves == len(improving) and load_checkpoint(out / "best.pt")["iter_num"] == improving[-1]["iter"]


def test_best_checkpoint_when_val_never_beats_the_start(char_data, tmp_path):
    """keep_checkpoints='best' writes best.pt at the first evaluation after the start even when val is
    worse there than the untrained model's (the starting weights are never saved, so their loss is no
    bar). Rates this far too high make every later val loss many times the first."""
    out = tmp_path / "out"
    proc = train(char_data, out, "--max_iters=8", "--eval_interval=4", "--keep_checkpoints=best",
                 "--warmup_iters=0", "--learning_rate=1", "--muon_lr=5")
    evals = [e for e in read_log(out) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 4, 8] and 2 * evals[0]["val_loss"] < min(e["val_loss"] for e in evals[1:])
    assert f"saved best.pt to {out}" in proc.stdout
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt"]
