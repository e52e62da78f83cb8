"""Every bad input of the reliability list: one clear line on stderr ('error: ...'), exit code 2,
no traceback, and nothing that existed changed or lost."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from kazgpt.cli import UserError
from conftest import REPO, TINY_MODEL, make_examples, prepare_char_dataset, run, write_jsonl, write_kazqad_source


def assert_one_line_error(proc, *fragments):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared char dataset and a short run with its checkpoints."""
    root = tmp_path_factory.mktemp("errors")
    prepare_char_dataset(root, 20)
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={root / 'data'}", f"--out_dir={root / 'out'}",
        *TINY_MODEL,
        "--max_iters=4", "--eval_interval=2")
    return root


def copy_data(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    return data


def train(trained, *args, data=None, out=None, env=None):
    return run("train.py", "config/train_qazdata_char.py", f"--data_dir={data or trained / 'data'}",
               f"--out_dir={out or trained / 'out'}", *TINY_MODEL, "--max_iters=6", *args, env=env, check=False)


# ---- configuration ----

@pytest.mark.parametrize("args, fragments", [
    (["--lerning_rate=1e-3"], ["unknown config key 'lerning_rate'", "did you mean 'learning_rate'"]),
    (["--batch_size=many"], ["batch_size must be int", "'many'"]),
    (["--batch_size=0"], ["batch_size must be at least 1"]),
    (["--block_size=0"], ["block_size must be at least 1"]),
    (["--max_iters=-1"], ["max_iters must be 0 or more"]),
    (["--warmup_iters=-3"], ["warmup_iters must be 0 or more"]),
    (["--lr_decay_iters=-1"], ["lr_decay_iters must be 0 or more"]),
    (["--grad_clip=-1.0"], ["grad_clip must be 0 (no clipping) or more"]),
    (["--learning_rate=0"], ["learning_rate must be a positive number"]),
    (["--learning_rate=-0.1"], ["learning_rate must be a positive number"]),
    (["--learning_rate=nan"], ["learning_rate must be float"]),
    (["--learning_rate=1e9"], ["learning_rate must be a positive number below 10"]),
    (["--mlp_ratio=0"], ["mlp_ratio must be a positive number"]),
    (["--mlp_ratio=-2"], ["mlp_ratio must be a positive number"]),
    (["--mlp_ratio=two"], ["mlp_ratio must be float"]),
    # shapes the model refuses are named before the out_dir (which holds a run here)
    (["--mlp_ratio=0.001"], ["mlp_ratio must give the MLP at least one hidden unit", "--mlp_ratio"]),
    (["--n_head=3"], ["n_embd (32) must be a multiple of n_head (3)", "--n_head"]),
    (["--n_head=32", "--position_encoding=rope"], ["rotary positions need an even head size, got 1"]),
    (["--device=cuda"], ["no CUDA GPU", "--device=cpu"]),
    (["--device=mps"], ["MPS is not available"]),
    (["--device=tpu"], ["unknown device 'tpu'"]),
    (["--dtype=float16"], ["float16 autocast is only used on CUDA"]),
    (["--dtype=fp8"], ["unknown dtype 'fp8'"]),
    (["--dataset=nope", "--data_dir="], None),
    (["--dataset=", "--data_dir="], ["unknown dataset ''", "the datasets are", "qazdata_char"]),
    (["--dataset=../data", "--data_dir="], ["unknown dataset '../data'", "--data_dir"]),
])
def test_bad_config_values(trained, args, fragments):
    before = snapshot(trained / "out")
    proc = train(trained, *args)
    if fragments is None:  # data_dir= is an empty string: the dataset name decides
        assert_one_line_error(proc, "unknown dataset 'nope'")
    else:
        assert_one_line_error(proc, *fragments)
    assert snapshot(trained / "out") == before


def test_config_files(trained, tmp_path):
    missing = run("train.py", str(tmp_path / "nope.py"), check=False)
    assert_one_line_error(missing, "config file", "nope.py does not exist")
    raises = tmp_path / "raises.py"
    raises.write_text("batch_size = undefined_name\n")
    assert_one_line_error(run("train.py", str(raises), check=False), "raises.py failed: NameError")
    bad_key = tmp_path / "bad_key.py"
    bad_key.write_text("n_layers = 4\n")
    assert_one_line_error(run("train.py", str(bad_key), check=False), "unknown config key 'n_layers'",
                          "did you mean 'n_layer'")


def test_bf16_unsupported_is_refused(monkeypatch):
    from kazgpt import device

    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: False)
    with pytest.raises(UserError, match="no bfloat16 support"):
        device.resolve_dtype("bfloat16", "cpu")


def _numpy_too_large():
    import numpy as np

    np.empty(2**46)  # 512 TiB: more than any address space, whatever the kernel's overcommit setting


def _cuda_out_of_memory():  # torch's message on a GPU, which the tests never need
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                 "of 79.10 GiB")


def _shapes_differ():
    raise RuntimeError("shapes differ")


def _model_larger_than_ram():
    from model import GPT, GPTConfig

    GPT(GPTConfig(n_layer=2**40, n_head=2, n_embd=32))  # refused before its first layer is built


@pytest.mark.parametrize("allocate, size", [
    (lambda: torch.empty(2**46), "tried to allocate 281474976710656 bytes"),  # 256 TiB, the CPU allocator's error
    (lambda: torch.empty(2**62, 4), "RuntimeError"),  # a byte count past 64 bits: 'Storage size calculation overflowed'
    (_numpy_too_large, "tried to allocate 512. TiB"),
    (_cuda_out_of_memory, "tried to allocate 20.00 GiB"),
    # 12,704 weights a block (n_embd 32, 4x MLP, biases) x 2**40 blocks x 4 bytes, more than any machine's RAM
    (_model_larger_than_ram, "tried to allocate 52,035,584.0 GiB"),
])
def test_out_of_memory_is_one_line(allocate, size, capsys):
    """Every script's main runs under run_main: an allocation that fails (CPU, numpy, CUDA) is one
    line naming its size and what to lower, exit code 2; any other RuntimeError stays a traceback."""
    from kazgpt.cli import run_main

    with pytest.raises(SystemExit) as stop:
        run_main(allocate, memory_hint="use a smaller --batch_size")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: out of memory ({size}): use a smaller --batch_size\n"
    with pytest.raises(RuntimeError, match="shapes differ"):
        run_main(_shapes_differ)


def test_an_error_quoting_a_several_line_message_stays_one_line(capsys):
    """A UserError that quotes another library's exception (wandb's settings error is several lines)
    is still printed as one line."""
    from kazgpt.cli import run_main

    def fails():
        raise UserError("wandb could not start (ValidationError: 1 validation error for Settings\nmode\n  Input "
                        "should be 'online'): run `wandb login`\n")

    with pytest.raises(SystemExit) as stop:
        run_main(fails)
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("error: wandb could not start (ValidationError: 1 validation error for "
                                       "Settings mode Input should be 'online'): run `wandb login`\n")


def test_accumulation_not_divisible_by_world_size(trained):
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    proc = train(trained, "--gradient_accumulation_steps=3", env=env)
    assert_one_line_error(proc, "gradient_accumulation_steps (3) must be divisible by the number of processes (2)")


# ---- data ----

def test_dataset_not_prepared(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(train(trained, data=empty), "is not prepared", "prepare.py")


@pytest.mark.parametrize("damage, fragment", [
    ("odd", "odd byte count"),
    ("short", "fewer than block_size+1"),
    ("meta_missing", "meta.json is missing"),
    ("meta_mismatch", "meta.json says"),
    ("meta_garbage", "meta.json is unreadable"),
])
def test_damaged_dataset(trained, tmp_path, damage, fragment):
    data = copy_data(trained, tmp_path)
    meta = json.loads((data / "meta.json").read_text())
    if damage == "odd":
        with open(data / "train.bin", "ab") as f:
            f.write(b"\0")
    elif damage == "short":
        (data / "val.bin").write_bytes(b"\0\0" * 10)
        meta["val_tokens"] = 10
        (data / "meta.json").write_text(json.dumps(meta))
    elif damage == "meta_missing":
        (data / "meta.json").unlink()
    elif damage == "meta_mismatch":
        meta["train_tokens"] += 5
        (data / "meta.json").write_text(json.dumps(meta))
    else:
        (data / "meta.json").write_text("{not json")
    assert_one_line_error(train(trained, data=data, out=tmp_path / "out"), fragment)


def test_tokenizer_not_matching_meta(trained, tmp_path):
    data = copy_data(trained, tmp_path)
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][:-3]
    (data / "meta.json").write_text(json.dumps(meta))
    assert_one_line_error(train(trained, data=data, out=tmp_path / "out"), "the tokenizer has", "different runs")


def test_tokenizer_file_missing(trained, tmp_path):
    data = copy_data(trained, tmp_path)
    meta = json.loads((data / "meta.json").read_text())
    meta["tokenizer"] = {"kind": "hf", "file": "tokenizer.json"}
    (data / "meta.json").write_text(json.dumps(meta))
    assert_one_line_error(train(trained, data=data, out=tmp_path / "out"), "tokenizer.json is missing")


# ---- checkpoints ----

def test_resume_without_checkpoint(trained, tmp_path):
    assert_one_line_error(train(trained, "--init_from=resume", out=tmp_path / "none"), "no checkpoint at")
    assert not (tmp_path / "none").exists()  # a failed resume creates nothing
    (tmp_path / "empty").mkdir()
    assert_one_line_error(train(trained, "--init_from=resume", out=tmp_path / "empty"), "no checkpoint at")


@pytest.mark.parametrize("args, key", [
    (["--init_from=resume", "--n_layer=3"], "n_layer=3"),
    (["--init_from=resume", "--n_embd=48"], "n_embd=48"),
    (["--init_from={out}", "--n_head=1"], "n_head=1"),
    (["--init_from={out}", "--bias=True"], "bias=True"),
    (["--init_from=resume", "--mlp_ratio=3"], "mlp_ratio=3.0"),
])
def test_shape_the_weights_do_not_have_is_refused(trained, tmp_path, args, key):
    """A model shape asked for beside init_from (resume, or a run to finetune) that its weights do not
    have cannot be honoured: one line, not a run with the checkpoint's shape."""
    before = snapshot(trained / "out")
    args = [a.format(out=trained / "out") for a in args]
    out = trained / "out" if "resume" in args[0] else tmp_path / "new"
    assert_one_line_error(train(trained, *args, out=out), key, "cannot be honoured")
    assert snapshot(trained / "out") == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "version", "pickle"])
def test_bad_checkpoint(trained, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    ckpt = out / "ckpt.pt"
    if damage == "garbage":
        ckpt.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "version":
        state = torch.load(ckpt, weights_only=True)
        state["version"] = 99
        torch.save(state, ckpt)
    else:  # an arbitrary pickled object: weights_only refuses to run it
        torch.save({"version": 1, "evil": UserError("x")}, ckpt)
    before = snapshot(out)
    proc = train(trained, "--init_from=resume", out=out)
    assert_one_line_error(proc, "format version 99" if damage == "version" else "is corrupt or truncated")
    assert snapshot(out) == before
    assert_one_line_error(run("sample.py", f"--out_dir={out}", "--checkpoint=ckpt.pt", check=False), "ckpt.pt")


def test_resume_with_other_vocabulary(trained, tmp_path):
    data = tmp_path / "data2"
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "other.jsonl", [dict(r, context=r["context"] + " XYZ §") for r in make_examples(10)])
    run("data/qazdata_char/prepare.py", f"--source={src}", f"--out_dir={data}")
    before = snapshot(trained / "out")
    assert_one_line_error(train(trained, "--init_from=resume", data=data), "another vocabulary")
    assert snapshot(trained / "out") == before


def test_block_size_larger_than_pretrained(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "tiny"
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=300)
    transformers.GPT2LMHeadModel(config).save_pretrained(hf_dir)
    assert_one_line_error(train(trained, f"--init_from={hf_dir}", "--block_size=32", out=tmp_path / "out"),
                          "larger than", "--block_size=16")


def test_out_dir_is_a_file_or_unwritable(trained, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("keep me")
    assert_one_line_error(train(trained, out=file), "is a file")
    assert file.read_text() == "keep me"
    assert_one_line_error(train(trained, out=file / "sub"), "not writable")


def test_out_dir_holding_a_run_is_kept(trained, tmp_path):
    """A new run into a folder that holds a run is refused (nothing changes), unless it resumes it or
    --overwrite replaces it; a folder with a user's own best.pt counts as holding one; an empty
    out_dir is refused."""
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    before = snapshot(out)
    assert_one_line_error(train(trained, out=out), "already holds a run", "--init_from=resume", "--overwrite")
    assert_one_line_error(train(trained, "--init_from=gpt2", out=out), "already holds a run")
    assert snapshot(out) == before
    proc = train(trained, "--overwrite", out=out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    evals = [e for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 6]  # the new run's log only
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best.pt").write_text("a user's file")
    assert_one_line_error(train(trained, out=mine), "already holds a run (best.pt)")
    assert (mine / "best.pt").read_text() == "a user's file"
    (mine / "best.pt").rename(mine / "log.jsonl")  # a run killed before its first checkpoint
    assert_one_line_error(train(trained, out=mine), "(log.jsonl): it has no checkpoint to resume", "--overwrite")
    assert_one_line_error(train(trained, "--out_dir="), "out_dir is empty")


def test_second_run_on_the_same_out_dir_is_refused(trained, tmp_path):
    from conftest import wait_for_log_lines

    out = tmp_path / "out"
    cmd = [sys.executable, "train.py", "config/train_qazdata_char.py", f"--data_dir={trained / 'data'}",
           f"--out_dir={out}", *TINY_MODEL, "--max_iters=100000", "--eval_interval=100000"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_log_lines(out / "log.jsonl", 1)
        assert_one_line_error(train(trained, "--init_from=resume", out=out), "another train.py is writing to")
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    from kazgpt import checkpoint

    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint({"x": torch.ones(3)}, path)
    before = path.read_bytes()

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint is untouched"):
        checkpoint.save_checkpoint({"x": torch.zeros(3)}, path)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# ---- sampling ----


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--start=Өзен €✓"], "outside this model's vocabulary: '€' '✓'"),
        (["--start=FILE:/no/such/prompt.txt"], "file /no/such/prompt.txt does not exist (from --start"),
        (["--max_new_tokens=0"], "max_new_tokens must be at least 1"),
        (["--temperature=0"], "temperature must be above 0"),
        (["--temperature=-1"], "temperature must be above 0"),
        (["--top_k=0"], "top_k must be at least 1"),
        (["--top_p=0"], "top_p must be in (0, 1]"),
        (["--top_p=1.5"], "top_p must be in (0, 1]"),
        (["--num_samples=0"], "num_samples must be at least 1"),
        (["--seed=-5"], "seed must be a whole number from 0 to 2**62"),
        (["--seed=4611686018427387905"], "seed must be a whole number from 0 to 2**62"),  # 2**62 + 1
        (["--seed=99999999999999999999999"], "seed must be at most 9,223,372,036,854,775,807 in size"),
        (["--init_from=gpt3"], "init_from must be resume"),
    ],
)
def test_bad_sample_args(trained, args, fragment):
    proc = run("sample.py", f"--out_dir={trained / 'out'}", "--device=cpu", *args, check=False)
    assert_one_line_error(proc, fragment)
    assert proc.stdout == ""


@pytest.mark.parametrize("args, fragment", [
    (["--limit=-3"], "limit must be at least 1"),
    (["--limit=0"], "limit must be at least 1"),
    (["--max_new_tokens=0"], "max_new_tokens must be at least 1"),
    (["--modes=reading,nope"], "--modes must be a comma-separated list"),
])
def test_bad_eval_qa_args(trained, tmp_path, args, fragment):
    output = tmp_path / "eval.jsonl"
    proc = run("eval_qa.py", f"--out_dir={trained / 'out'}", "--device=cpu", f"--output={output}", *args, check=False)
    assert_one_line_error(proc, fragment)
    assert proc.stdout == "" and not output.exists()


def test_hub_warnings_are_held_back_while_loading():
    """Offline, the hub client logs a warning per failed request and per retry (a dozen lines before
    the one-line error); hub_warnings_held_back holds them back, also when the client is first imported
    inside it (its import sets its logger's level), and lets them through again afterwards."""
    code = (
        "from kazgpt.cli import hub_warnings_held_back\n"
        "with hub_warnings_held_back():\n"
        "    from huggingface_hub.utils import logging\n"
        "    logging.get_logger('huggingface_hub.utils._http').warning('retrying inside')\n"
        "logging.get_logger('huggingface_hub.utils._http').warning('warning after')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "retrying inside" not in proc.stderr and "warning after" in proc.stderr


# ---- prepare sources ----


def test_bad_prepare_sources(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.bin").write_bytes(b"old")  # an earlier dataset of this repo's (its meta.json beside it)
    (out / "meta.json").write_text('{"vocab_size": 3, "tokenizer": {"kind": "char", "chars": "abc"}}')
    prep = lambda *a, env=None: run("data/qazdata_char/prepare.py", f"--out_dir={out}", *a, env=env, check=False)
    assert_one_line_error(prep(f"--source={tmp_path / 'missing'}"), f"--source {tmp_path / 'missing'} does not exist")
    # the message names where the path came from
    from_env = prep(env={"KAZQAD_SOURCE": str(tmp_path / "gone")})
    assert_one_line_error(from_env, f"$KAZQAD_SOURCE {tmp_path / 'gone'} does not exist")
    from_nq = prep(f"--source={write_kazqad_source(tmp_path / 'src', 3)}", f"--nq_source={tmp_path / 'gone'}")
    assert_one_line_error(from_nq, f"--nq_source {tmp_path / 'gone'} does not exist")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Қазақ".encode("utf-8") + b"\xe9t\xe9\n\nmore")
    assert_one_line_error(prep(f"--source={bad}"), "is not UTF-8")
    schema = write_jsonl(tmp_path / "wrong-train.jsonl", [{"text": "no question here"}])
    assert_one_line_error(prep(f"--source={schema}"), "not in KazQAD's schema", "missing context, question, answers")
    notjson = tmp_path / "notjson.jsonl"
    notjson.write_text("{broken\n")
    assert_one_line_error(prep(f"--source={notjson}"), "line 1 is not JSON")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert_one_line_error(prep(f"--source={empty}"), "holds no examples")
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("\n\n")
    assert_one_line_error(prep(f"--source={empty_txt}"), "0 document(s)")
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    assert_one_line_error(prep(f"--source={empty_dir}"), "holds no .jsonl files")
    offline = prep(env={"HF_HUB_OFFLINE": "1", "KAZQAD_SOURCE": ""})
    assert_one_line_error(offline, "could not load issai/kazqad", "--source=PATH")
    assert (out / "train.bin").read_bytes() == b"old"
    if os.geteuid() != 0:  # root reads everything, so this case can only be seen as a user
        unreadable = write_jsonl(tmp_path / "locked.jsonl", make_examples(2))
        unreadable.chmod(0)
        assert_one_line_error(prep(f"--source={unreadable}"), "cannot read")
