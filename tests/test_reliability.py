"""Reliability under kill -9, DDP on CPU against one process, and token files larger than RAM."""
import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kazgpt.checkpoint import load_checkpoint
from conftest import REPO, TINY_MODEL, prepare_char_dataset, read_log, run, wait_for_log_lines


@pytest.fixture(scope="module")
def char_data(tmp_path_factory):
    return prepare_char_dataset(tmp_path_factory.mktemp("rel"), 30)


def wait_for_new_checkpoint(ckpt, proc, timeout: float = 120.0) -> None:
    """Until the run has saved a checkpoint newer than the one there before it started (start-up and
    the first steps take seconds, and longer on a busy machine)."""
    def saved() -> int:
        return ckpt.stat().st_mtime_ns if ckpt.exists() else 0
    before, deadline = saved(), time.time() + timeout
    while time.time() < deadline and proc.poll() is None and saved() <= before:
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_always_leaves_a_loadable_checkpoint(char_data, tmp_path):
    """3 kill -9 at random moments of a run that saves at every step (each after it has saved once):
    every time, ckpt.pt loads, and the next start resumes from it."""
    out = tmp_path / "out"
    rng = random.Random(0)
    base = [sys.executable, "train.py", "config/train_qazdata_char.py", f"--data_dir={char_data}", f"--out_dir={out}",
            *TINY_MODEL, "--eval_interval=1", "--eval_iters=1", "--keep_checkpoints=latest", "--max_iters=100000"]
    resumed_from = []
    for _ in range(3):
        resume = (out / "ckpt.pt").exists()
        proc = subprocess.Popen(base + (["--init_from=resume"] if resume else ["--overwrite"]), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_new_checkpoint(out / "ckpt.pt", proc)  # so that each run gets further than the last
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate()[0]
        if resume:
            assert "resuming from" in output, output[-2000:]
            resumed_from.append(int(output.split("at iteration ")[1].split()[0]))
        if (out / "ckpt.pt").exists():
            ckpt = load_checkpoint(out / "ckpt.pt")  # raises UserError if torn
            assert ckpt["iter_num"] >= (resumed_from[-1] if resumed_from else 0)
    assert len(resumed_from) >= 2 and resumed_from == sorted(resumed_from) and resumed_from[-1] > resumed_from[0]


@pytest.mark.slow
def test_ddp_two_processes_match_one(char_data, tmp_path):
    """torchrun with 2 CPU processes (gloo) against 1 process with the same global batch: the
    same sequences are drawn, so per-step losses agree to float rounding (stated tolerance 1e-4),
    under the default recipe (Muon for the block matrices, AdamW for the rest)."""
    args = ["config/train_qazdata_char.py", f"--data_dir={char_data}", *TINY_MODEL, "--gradient_accumulation_steps=2",
            "--max_iters=12", "--eval_interval=6"]
    one, two = tmp_path / "one", tmp_path / "two"
    run("train.py", *args, f"--out_dir={one}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            *args,
            f"--out_dir={two}",
            "--backend=nccl",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the gloo backend instead of nccl" in proc.stdout
    assert proc.stdout.count("step 12: train loss") == 1  # rank 0 alone logs
    a = {e["iter"]: e["loss"] for e in read_log(one) if "loss" in e}
    b = {e["iter"]: e["loss"] for e in read_log(two) if "loss" in e}
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert max(abs(a[i] - b[i]) for i in a) < 1e-4, (a, b)
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == ["best.pt", "ckpt.pt", "log.jsonl"]


def test_train_bin_larger_than_ram(char_data, tmp_path):
    """A 32 GB train.bin (sparse: it takes no disk) on a 24 GB machine: memmap reads only the
    windows it samples, so training runs and memory stays small."""
    data = tmp_path / "big"
    shutil.copytree(char_data, data)
    n_tokens = 16 * 2**30
    with open(data / "train.bin", "r+b") as f:
        f.truncate(2 * n_tokens)
    meta = json.loads((data / "meta.json").read_text())
    meta["train_tokens"] = n_tokens
    (data / "meta.json").write_text(json.dumps(meta))
    proc = run(
        "train.py",
        "config/train_qazdata_char.py",
        f"--data_dir={data}",
        f"--out_dir={tmp_path / 'out'}",
        *TINY_MODEL,
        "--max_iters=5",
        "--eval_interval=5",
        fresh=True,  # a direct child, which RUSAGE_CHILDREN sees
    )
    assert f"{n_tokens:,} train tokens" in proc.stdout
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    assert rss_kb < 2 * 2**20, rss_kb  # under 2 GB


@pytest.mark.parametrize("log_interval", [1, 3])
def test_non_finite_loss_stops_with_the_step(char_data, tmp_path, log_interval):
    """A NaN in the weights makes the first loss NaN: the run stops naming the step, and the
    checkpoint it resumed from is left as it was. With log_interval=3 the loss of step 5 stays on
    the device until the read-back after step 6, and the message still names step 5."""
    from kazgpt.checkpoint import save_checkpoint

    out = tmp_path / "out"
    run(
        "train.py",
        "config/train_qazdata_char.py",
        f"--data_dir={char_data}",
        f"--out_dir={out}",
        *TINY_MODEL,
        "--max_iters=4",
        "--eval_interval=4",
    )
    ckpt = load_checkpoint(out / "ckpt.pt")
    ckpt["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_checkpoint({k: v for k, v in ckpt.items() if k != "version"}, out / "ckpt.pt")
    before = (out / "ckpt.pt").read_bytes()
    proc = run(
        "train.py",
        "config/train_qazdata_char.py",
        f"--data_dir={char_data}",
        f"--out_dir={out}",
        *TINY_MODEL,
        "--init_from=resume",
        "--max_iters=8",
        "--eval_interval=100",
        f"--log_interval={log_interval}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: the loss became nan at step 5" in proc.stderr
    assert (out / "ckpt.pt").read_bytes() == before


@pytest.mark.slow
def test_sigterm_under_ddp_stops_every_rank_at_a_read_back(char_data, tmp_path):
    """Under torchrun the ranks agree to stop only where the loss is read back (every log_interval
    steps), so no step pays for a collective: a SIGTERM sent to the launcher reaches both workers,
    they stop at the same read-back step with a checkpoint, and the run resumes from it."""
    out = tmp_path / "out"
    args = ["config/train_qazdata_char.py", f"--data_dir={char_data}", f"--out_dir={out}", *TINY_MODEL,
            "--gradient_accumulation_steps=2", "--log_interval=4", "--eval_interval=100000"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", *args,
           "--max_iters=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_log_lines(out / "log.jsonl", 4, timeout=120)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "SIGTERM received" in stderr, stderr[-3000:]
    assert stdout.count("stopped at iteration") == 1, stdout[-3000:]  # rank 0 reports for both
    stopped = load_checkpoint(out / "ckpt.pt")["iter_num"]
    assert stopped % 4 == 0 and f"stopped at iteration {stopped}:" in stdout
    proc = run("train.py", *args, "--init_from=resume", f"--max_iters={stopped + 4}")
    assert f"resuming from {out / 'ckpt.pt'} at iteration {stopped}" in proc.stdout
