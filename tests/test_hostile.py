"""Hostile input, by class: an interrupted or failing write leaves the old files whole (datasets,
images, results, exports), outputs never replace a file their script did not make, torchrun's
environment set wrong, wandb that cannot start, log files with foreign lines, bad source rows.
Each case: exit code 2, exactly one 'error:' line, no traceback, nothing that existed changed."""
import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, make_examples, prepare_char_dataset, run, write_jsonl
from kazgpt.cli import UserError
from test_errors import assert_one_line_error, snapshot


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    prepare_char_dataset(root, 12)
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={root / 'data'}", f"--out_dir={root / 'out'}",
        *TINY_MODEL, "--max_iters=2", "--eval_interval=2")
    return root


def train(trained, *args, env=None, out=None):
    return run("train.py", "config/train_qazdata_char.py", f"--data_dir={trained / 'data'}",
               f"--out_dir={out or trained / 'new-out'}", *TINY_MODEL, "--max_iters=2", *args, env=env, check=False)


# ---- datasets are replaced whole or not at all ----

@pytest.mark.parametrize("stop", ["disk_full", "ctrl_c"])
def test_interrupted_dataset_write_keeps_the_old_dataset(tmp_path, monkeypatch, stop):
    from kazgpt import files
    from kazgpt.dataset import write_dataset
    from kazgpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("abc\n")
    write_dataset(tmp_path, [0, 1, 2] * 10, [2, 1] * 10, tokenizer, 20)
    before = snapshot(tmp_path)
    calls = []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the second file of the new dataset
            if stop == "ctrl_c":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(KeyboardInterrupt if stop == "ctrl_c" else UserError):
        write_dataset(tmp_path, [1, 1, 1] * 50, [0] * 40, tokenizer, 40)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("stop", ["io_error", "ctrl_c"])
def test_a_rename_that_fails_midway_puts_the_old_dataset_back(tmp_path, monkeypatch, stop):
    from kazgpt import files
    from kazgpt.dataset import write_dataset
    from kazgpt.tokenizer import CharTokenizer

    tokenizer = CharTokenizer("ab")
    write_dataset(tmp_path, [0, 1] * 10, [1] * 10, tokenizer, 10, masks=([1] * 20, [1] * 10),
                  extra_files={"tokenizer.json": "old"})
    before = snapshot(tmp_path)
    renames = []
    real_replace = files.os.replace

    def second_rename_fails(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt if stop == "ctrl_c" else OSError(errno.EIO, "I/O error")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", second_rename_fails)
    with pytest.raises(KeyboardInterrupt if stop == "ctrl_c" else UserError):
        write_dataset(tmp_path, [1] * 30, [0] * 30, tokenizer, 30, extra_files={"tokenizer.json": "new"})
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert len(renames) > 2 and snapshot(tmp_path) == before  # the renamed file put back, the masks kept
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    write_dataset(tmp_path, [1] * 30, [0] * 30, tokenizer, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]  # no stale mask


def test_a_text_corpus_replaces_a_qa_dataset_whole(tmp_path):
    from kazgpt.corpus import write_streamed_dataset
    from kazgpt.dataset import write_dataset
    from kazgpt.tokenizer import TiktokenTokenizer

    tokenizer = TiktokenTokenizer("gpt2")
    write_dataset(tmp_path, [0, 1] * 10, [1] * 10, tokenizer, 10, masks=([1] * 20, [1] * 10),
                  extra_files={"tokenizer.json": "old"})
    write_streamed_dataset(tmp_path, iter([f"document {i}" for i in range(400)]), tokenizer, tokenizer.spec, 0.1, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "train.bin", "val.bin"]


@pytest.mark.parametrize("case", ["foreign_meta", "bins_without_meta", "folder_named_val_bin"])
def test_prepare_refuses_a_folder_of_files_it_did_not_make(tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    if case == "foreign_meta":
        (out / "meta.json").write_text('{"mine": 1}')
    elif case == "bins_without_meta":
        (out / "train.bin").write_bytes(b"a user's bytes")
    else:
        (out / "val.bin").mkdir()
    before = snapshot(out)
    source = tmp_path / "corpus.txt"
    source.write_text("\n\n".join(["Абай Құнанбайұлы ақын."] * 30))
    proc = run("data/qazdata_char/prepare.py", f"--source={source}", f"--out_dir={out}", check=False)
    assert_one_line_error(proc, str(out))
    assert snapshot(out) == before and len(list(out.iterdir())) == 1


def test_stale_dataset_temporaries_are_removed_and_only_those(tmp_path):
    from kazgpt.dataset import write_dataset
    from kazgpt.tokenizer import CharTokenizer

    (tmp_path / ".train.bin.kazgpt-tmp123").write_bytes(b"stale")
    (tmp_path / ".train.bin.partial").write_bytes(b"user's")
    (tmp_path / "notes.txt").write_text("mine")
    write_dataset(tmp_path, [0, 1] * 10, [1] * 10, CharTokenizer("ab"), 10)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".train.bin.partial", "meta.json", "notes.txt", "train.bin", "val.bin"]


# ---- outputs never replace what their script did not make ----

def test_plot_outputs(trained, tmp_path):
    out = trained / "out"
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a user's picture")
    assert_one_line_error(run("plot.py", f"--out_dir={out}", f"--png={mine}", check=False), "was not written")
    assert mine.read_bytes() == b"a user's picture"
    assert_one_line_error(run("plot.py", f"--out_dir={out}", f"--png={tmp_path / 'x.jpg'}", check=False),
                          ".png, .pdf, .svg")
    assert_one_line_error(run("plot.py", f"--out_dir={out}", f"--png={tmp_path / 'no' / 'x.png'}", check=False),
                          "does not exist")
    (tmp_path / "dir.png").mkdir()
    assert_one_line_error(run("plot.py", f"--out_dir={out}", f"--png={tmp_path / 'dir.png'}", check=False),
                          "is a folder")
    svg = tmp_path / "curve.svg"
    run("plot.py", f"--out_dir={out}", f"--png={svg}")
    run("plot.py", f"--out_dir={out}", f"--png={svg}")  # its own image: replaced
    assert b"kazgpt plot.py" in svg.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.svg", "dir.png", "mine.png"]


def test_plot_skips_foreign_log_lines(trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lines = (trained / "out" / "log.jsonl").read_text().splitlines()
    junk = ['{"iter": 3, "loss": NaN, "ms": 1}', '{"trunc', "plain text", "[1, 2]", '{"iter": "x", "loss": 1, "ms": 1}',
            '{"iter": 1, "loss": true, "ms": 1}']
    (out / "log.jsonl").write_text("\n".join(lines[:2] + junk + lines[2:]) + "\n")
    proc = run("plot.py", f"--out_dir={out}")
    assert "skipped 6 line(s)" in proc.stderr and "Traceback" not in proc.stderr
    assert (out / "loss.png").exists()


def test_bench_json_output(tmp_path):
    source = write_jsonl(tmp_path / "kazqad.jsonl", make_examples(4))
    quick = ["--models=", f"--retrieval={source}"]  # the quickest run that has results
    mine = tmp_path / "results.json"
    mine.write_text('{"mine": 1}')
    assert_one_line_error(run("bench.py", *quick, f"--json={mine}", check=False), "was not written")
    assert mine.read_text() == '{"mine": 1}'
    ours = tmp_path / "bench.json"
    run("bench.py", *quick, f"--json={ours}")
    run("bench.py", *quick, f"--json={ours}")  # its own results: replaced
    assert json.loads(ours.read_text())["retrieval"]


@pytest.mark.parametrize("args, fragment", [
    (["--models="], "nothing to run: --models is empty"),
    (["--models=,"], "nothing to run: --models is empty"),
    (["--compare_nanogpt="], "--compare_nanogpt is empty"),
    (["--retrieval= "], "--retrieval is empty"),
    (["--json="], "--json is empty"),
    (["--data_dir=data"], "--data_dir is the data of --compare_nanogpt"),
])
def test_bench_refuses_runs_that_would_replace_results_with_less(args, fragment, tmp_path):
    """A run with nothing to do, or with a part named by an empty flag, would write results without
    what was asked (an empty run replaced the earlier bench.json): refused before anything runs."""
    earlier = tmp_path / "bench.json"
    run("bench.py", "--models=", f"--retrieval={write_jsonl(tmp_path / 'k.jsonl', make_examples(4))}",
        f"--json={earlier}")
    before = earlier.read_bytes()
    json_flag = [] if args[0].startswith("--json") else [f"--json={earlier}"]
    proc = run("bench.py", *args, *json_flag, check=False, timeout=60)
    assert_one_line_error(proc, fragment)
    assert earlier.read_bytes() == before


def test_export_refusals_leave_nothing(trained, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    os.mkfifo(tmp_path / "pipe")
    for not_a_folder in (target, tmp_path / "pipe", "/dev/zero"):
        assert_one_line_error(run("export_hf.py", f"--out_dir={trained / 'out'}", f"--export_dir={not_a_folder}",
                                  check=False), f"{not_a_folder} exists and is not a folder")
    assert_one_line_error(run("export_hf.py", f"--out_dir={trained / 'out'}",
                              f"--export_dir={tmp_path / 'a' / 'b'}", check=False), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "pipe"]
    # the newer architecture (rotary positions, ReLU squared, QK-norm) has no transformers GPT-2 to go into
    assert_one_line_error(run("export_hf.py", f"--out_dir={trained / 'out'}", f"--export_dir={tmp_path / 'hf'}",
                              check=False), "transformers' GPT-2 cannot hold", "--position_encoding=learned")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "pipe"]


def test_eval_qa_output_not_its_own(trained, tmp_path):
    src = write_jsonl(tmp_path / "src-validation.jsonl", make_examples(3))
    mine = tmp_path / "answers.jsonl"
    mine.write_text("my notes\n")
    proc = run("eval_qa.py", f"--out_dir={trained / 'out'}", f"--source={src}", f"--output={mine}", "--limit=1",
               "--device=cpu", check=False)
    assert_one_line_error(proc, "was not written")
    assert mine.read_text() == "my notes\n"
    ours = tmp_path / "ours.jsonl"
    for _ in range(2):  # its own results: replaced
        run("eval_qa.py", f"--out_dir={trained / 'out'}", f"--source={src}", f"--output={ours}", "--limit=1",
            "--max_new_tokens=2", "--device=cpu")
    assert len(ours.read_text().splitlines()) == 2


# ---- environment ----

@pytest.mark.parametrize("env, fragment", [
    ({"RANK": "0"}, "RANK is set but LOCAL_RANK is not"),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "RANK='x' is not a whole number"),
    ({"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "do not describe a process"),
    ({"RANK": "0", "LOCAL_RANK": "-1", "WORLD_SIZE": "1"}, "do not describe a process"),
    ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": ""}, "could not join the DDP job"),
])
def test_torchrun_environment_set_wrong(trained, env, fragment):
    proc = train(trained, "--gradient_accumulation_steps=1", env={"MASTER_ADDR": "", "MASTER_PORT": "", **env})
    assert_one_line_error(proc, fragment)
    assert not (trained / "new-out").exists()


def test_wandb_without_login_leaves_nothing_in_the_way(trained, tmp_path):
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "online", "WANDB_DIR": str(tmp_path), "HOME": str(tmp_path)}
    out = tmp_path / "run"
    proc = train(trained, "--wandb_log=True", env=env, out=out)
    assert_one_line_error(proc, "wandb could not start", "wandb login")
    assert not (out / "log.jsonl").exists()
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={trained / 'data'}", f"--out_dir={out}", *TINY_MODEL,
        "--max_iters=1")  # the same out_dir works at once without wandb


@pytest.mark.parametrize("refusal", ["wandb", "shape"])
def test_overwrite_that_fails_to_start_keeps_the_earlier_run(trained, tmp_path, refusal):
    """--overwrite replaces an earlier run only once the new one has started: refused by wandb, or by a
    shape its init_from cannot give, the earlier run's files are all still there, unchanged."""
    out = tmp_path / "run"
    shutil.copytree(trained / "out", out)
    before = snapshot(out)
    env = {"WANDB_API_KEY": "", "WANDB_MODE": "online", "WANDB_DIR": str(tmp_path), "HOME": str(tmp_path)}
    args = ["--wandb_log=True"] if refusal == "wandb" else [f"--init_from={trained / 'out'}", "--n_layer=5"]
    proc = train(trained, "--overwrite", *args, env=env, out=out)
    assert_one_line_error(proc, "wandb could not start" if refusal == "wandb" else "cannot be honoured")
    assert snapshot(out) == before


def test_overwrite_that_fails_or_is_killed_before_its_first_checkpoint_keeps_the_earlier_run(trained, tmp_path):
    """--overwrite sets the earlier run aside until its own first checkpoint: a run that fails once
    started (a NaN loss at its first step) puts it back on its way out, and one killed outright
    (kill -9, as the kernel's out-of-memory killer does) has it put back by the next train.py there."""
    import subprocess
    import sys
    import time

    from conftest import REPO
    from kazgpt.checkpoint import load_checkpoint, save_checkpoint
    from kazgpt.files import SET_ASIDE

    out, poisoned = tmp_path / "run", tmp_path / "poisoned"
    shutil.copytree(trained / "out", out)
    shutil.copytree(trained / "out", poisoned)
    for name in ("ckpt.pt", "best.pt"):
        ckpt = load_checkpoint(poisoned / name)
        ckpt["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
        save_checkpoint({k: v for k, v in ckpt.items() if k != "version"}, poisoned / name)
    before = snapshot(out)
    assert_one_line_error(train(trained, "--overwrite", f"--init_from={poisoned}", out=out), "the loss became nan")
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir() if p.is_dir()) == []

    cmd = [sys.executable, "train.py", "config/train_qazdata_char.py", f"--data_dir={trained / 'data'}",
           f"--out_dir={out}", *TINY_MODEL, "--overwrite", "--max_iters=100000", "--eval_interval=100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # until the new run is training: the earlier one set aside, the new log begun
        deadline = time.time() + 60
        while time.time() < deadline and not ((out / SET_ASIDE).is_dir() and (out / "log.jsonl").exists()
                                              and (out / "log.jsonl").read_text().count("\n") >= 2):
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "ckpt.pt").exists() and (out / SET_ASIDE / "ckpt.pt").exists()
    refused = train(trained, out=out)
    assert_one_line_error(refused, "already holds a run")
    assert "put back the earlier run" in refused.stdout
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir() if p.is_dir()) == []


@pytest.mark.parametrize("state", ["filling", "set_aside", "set_aside_and_replaced", "restoring", "deleting"])
def test_a_replacement_killed_in_any_state_is_finished_by_the_next_start(tmp_path, state):
    """Killed between any two renames of a replacement, the next start leaves either the earlier
    files (the new ones had no checkpoint yet) or the new ones (they had), never a mix, and no
    hidden folder; SetAside's own put_back and replaced do the same for a process still alive."""
    from kazgpt import files

    names, old, new = ("ckpt.pt", "log.jsonl"), {"ckpt.pt": "old ckpt", "log.jsonl": "old log"}, {"log.jsonl": "new"}
    folder = tmp_path / "run"
    folder.mkdir()
    if state == "filling":  # the log moved, the checkpoint not yet
        (folder / files._FILLING).mkdir()
        (folder / files._FILLING / "log.jsonl").write_text(old["log.jsonl"])
        (folder / "ckpt.pt").write_text(old["ckpt.pt"])
    elif state == "restoring":  # the new log deleted, the old log back, the checkpoint not yet
        (folder / files._RESTORING).mkdir()
        (folder / files._RESTORING / "ckpt.pt").write_text(old["ckpt.pt"])
        (folder / "log.jsonl").write_text(old["log.jsonl"])
    else:
        aside = folder / (files._DELETING if state == "deleting" else files.SET_ASIDE)
        aside.mkdir()
        (aside / "log.jsonl").write_text(old["log.jsonl"])
        if state != "deleting":  # deleting: half done
            (aside / "ckpt.pt").write_text(old["ckpt.pt"])
        new = {"ckpt.pt": "new ckpt", "log.jsonl": "new"} if state in ("set_aside_and_replaced", "deleting") else new
        for name, text in new.items():
            (folder / name).write_text(text)
    put_back = files.put_back_interrupted_replacement(folder, names, replaced_by=("ckpt.pt",))
    expected = new if state in ("set_aside_and_replaced", "deleting") else old
    assert put_back == (expected is old)
    assert {p.name: p.read_text() for p in folder.iterdir()} == expected

    for finish in ("put_back", "replaced"):
        aside = files.SetAside(folder, names)
        (folder / "log.jsonl").write_text("newer")
        getattr(aside, finish)()
        assert {p.name: p.read_text() for p in folder.iterdir()} == (expected if finish == "put_back" else
                                                                     {"log.jsonl": "newer"})
        expected = {"log.jsonl": "newer"}


def test_a_replacement_that_cannot_set_the_files_aside_leaves_them(tmp_path, monkeypatch):
    """A rename that fails midway while setting files aside (a failing device) moves back what it
    had moved and says so in one line: every file where it was, no hidden folder."""
    import os

    from kazgpt import files

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("ckpt.pt", "log.jsonl"):
        (folder / name).write_text(name)
    real_replace, calls = os.replace, []

    def failing_second_replace(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_second_replace)
    with pytest.raises(UserError, match="could not set the earlier files .* aside .*Input/output error"):
        files.SetAside(folder, ("ckpt.pt", "log.jsonl"))
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"ckpt.pt": "ckpt.pt", "log.jsonl": "log.jsonl"}


@pytest.mark.parametrize("seed, fragment", [
    ("-1", "seed must be a whole number from 0"),
    (str(2**62), "seed must be a whole number from 0"),
    (str(2**63 - 1), "seed must be a whole number from 0"),
    ("1" * 30, "seed must be at most 9,223,372,036,854,775,807 in size"),  # past 64 bits: the configurator's line
])
def test_seed_out_of_range(trained, seed, fragment):
    assert_one_line_error(train(trained, f"--seed={seed}"), fragment)


# ---- source rows of the wrong type or shape ----

@pytest.mark.parametrize("damage, fragment", [
    (lambda r: r.update(context=None), "'context' must be text"),
    (lambda r: r.update(context=5), "'context' must be text"),
    (lambda r: r.update(question=["a", "b"]), "'question' must be text"),
    (lambda r: r.update(title=3.5), "'title' must be text"),
    (lambda r: r.update(answers={"text": "Астана", "answer_start": [0]}), "'answers.text' must be a list of texts"),
    (lambda r: r.update(answers={"text": [None], "answer_start": [0]}), "'answers.text' must be a list of texts"),
    (lambda r: r.update(answers={"text": ["a"], "answer_start": "0"}), "'answers.answer_start' must be a list"),
    (lambda r: r.update(answers=["Астана"]), "'answers' has no 'text' list"),
])
def test_source_rows_of_the_wrong_type(trained, tmp_path, damage, fragment):
    rows = make_examples(4)
    damage(rows[3])
    src = write_jsonl(tmp_path / "src.jsonl", rows)
    out = tmp_path / "data"
    assert_one_line_error(run("data/qazdata_char/prepare.py", f"--source={src}", f"--out_dir={out}", check=False),
                          "line 4", fragment)
    assert not out.exists() or not any(out.iterdir())
    if "context" in fragment:  # eval_qa.py reads sources the same way
        assert_one_line_error(run("eval_qa.py", f"--source={src}", f"--out_dir={trained / 'out'}", check=False),
                              "line 4", fragment)


def test_answer_start_pointing_elsewhere_is_searched(tmp_path):
    from kazgpt.qa_examples import kazqad_examples
    from kazgpt.tokenizer import CharTokenizer

    rows = make_examples(1, 1)
    rows[0]["answers"]["answer_start"] = [10_000]
    text = rows[0]["context"] + rows[0]["question"] + rows[0]["title"]
    examples, dropped = kazqad_examples(rows, CharTokenizer("".join(sorted(set(text + "\n :")))), 400)
    assert dropped == 0 and examples[0].answer == " 100 шақырым\n" and "100 шақырым" in examples[0].prompt


def test_txt_corpus_of_one_sentence_per_line_is_split_by_lines(tmp_path):
    lines = [f"Бұл {i}-сөйлем, қазақ тілінде жазылған." for i in range(200)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = run("data/qazdata_char/prepare.py", f"--source={src}", f"--out_dir={tmp_path / 'data'}")
    assert "split by lines" in proc.stdout
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert 0.05 < meta["val_tokens"] / (meta["train_tokens"] + meta["val_tokens"]) < 0.2


def test_qa_dataset_mask_disagreeing_with_tokens(tmp_path):
    from kazgpt.dataset import write_dataset
    from kazgpt.tokenizer import CharTokenizer

    data = tmp_path / "qa"
    data.mkdir()
    ids = [0, 1, 2, 3] * 80
    mask = ([2, 0, 1, 0]) * 80
    write_dataset(data, ids, ids, CharTokenizer("ab:\n"), None, masks=(mask, mask),
                  extra_meta={"kind": "qa", "block_size": 64})
    (data / "val.mask").write_bytes(np.zeros(10, dtype=np.uint8).tobytes())
    proc = run("train.py", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", *TINY_MODEL, "--max_iters=1",
               "--block_size=64", check=False)
    assert_one_line_error(proc, "val.mask holds 10 entries for 320 tokens")
    proc = run("train.py", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", *TINY_MODEL, "--max_iters=1",
               check=False)  # TINY_MODEL's block_size 32
    assert_one_line_error(proc, "up to 64 tokens long", "--block_size=64")


def test_token_ids_beyond_the_vocabulary(trained, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(trained / "data", data)
    ids = np.fromfile(data / "val.bin", dtype=np.uint16)
    ids[5] = 60000
    ids.tofile(data / "val.bin")
    before = snapshot(data)
    proc = run("train.py", f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", *TINY_MODEL, "--max_iters=1",
               check=False)
    assert_one_line_error(proc, "token id 60000", "different tokenizers")
    assert snapshot(data) == before


def damage_training_state(ckpt: dict, damage: str) -> None:
    import torch

    first = next(iter(ckpt["muon"]["state"]))  # a block matrix's state (the fixture trains with Muon)
    if damage == "no_optimizer":
        del ckpt["optimizer"]
    elif damage == "optimizer_of_another_model":
        ckpt["optimizer"]["param_groups"][0]["params"].append(999)  # one parameter more than this model's group
    elif damage == "iter_num_text":
        ckpt["iter_num"] = "many"
    elif damage == "muon_buffer_of_another_shape":  # a traceback mid-step, before the check
        ckpt["muon"]["state"][first]["momentum_buffer"] = torch.zeros(3, 3)
    elif damage == "muon_buffer_text":
        ckpt["muon"]["state"][first]["momentum_buffer"] = "x"
    elif damage == "adamw_moment_of_another_shape":  # the fused AdamW kernel's process died, before the check
        state = ckpt["optimizer"]["state"]
        state[next(iter(state))]["exp_avg"] = torch.zeros(3, 3)
    else:  # an optimizer no recipe has: it trained on as Muon and wrote the name back, before the check
        ckpt["optimizer_name"] = damage.removeprefix("optimizer_name_")


@pytest.mark.parametrize("damage, fragment", [
    ("no_optimizer", "training state does not load"),
    ("optimizer_of_another_model", "training state does not load"),
    ("iter_num_text", "training state does not load"),
    ("muon_buffer_of_another_shape", "momentum_buffer of a (96, 32) parameter has shape (3, 3)"),
    ("muon_buffer_text", "momentum_buffer of a (96, 32) parameter is a str"),
    ("adamw_moment_of_another_shape", "exp_avg of a"),
    ("optimizer_name_adam", "records its optimizer as 'adam', neither adamw nor muon"),
])
def test_resume_from_a_damaged_training_state(trained, tmp_path, damage, fragment):
    import torch

    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    damage_training_state(ckpt, damage)
    torch.save(ckpt, out / "ckpt.pt")
    before = snapshot(out)
    proc = run("train.py", f"--data_dir={trained / 'data'}", f"--out_dir={out}", *TINY_MODEL, "--max_iters=4",
               "--init_from=resume", check=False, timeout=120)
    assert_one_line_error(proc, fragment, "--init_from=<the checkpoint file>")
    assert snapshot(out) == before


@pytest.mark.parametrize("script, args, fragment", [
    ("data/qazdata_char/prepare.py", ["--bogus"], "unrecognized arguments: --bogus"),
    ("data/qazdata_qa/prepare.py", ["--question_loss=yes"], "ignored explicit argument 'yes'"),
    ("data/qazdata_bpe/prepare.py", ["--vocab_size=many"], "invalid int value: 'many'"),
    ("data/kkwiki/prepare.py", ["--num_proc"], "expected one argument"),
    ("data/openwebtext/prepare.py", ["--val_fraction=x"], "invalid float value: 'x'"),
    ("bench.py", ["--iters=ten"], "invalid int value: 'ten'"),
])
def test_bad_options_of_the_argparse_scripts_are_one_line(script, args, fragment, tmp_path):
    """The prepare scripts and bench.py parse options with argparse; a bad one is one `error:` line
    (no usage dump), and nothing is written."""
    proc = run(script, *args, f"--out_dir={tmp_path / 'out'}" if "prepare" in script else "--models=", check=False)
    assert_one_line_error(proc, fragment, "--help")
    assert "usage:" not in proc.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("damaged", ["retrieval", "compare_nanogpt"])
def test_bench_refuses_damaged_inputs_before_the_tables(damaged, tmp_path):
    """bench.py reads the inputs of its later parts (a KazQAD source for --retrieval, the prepared data
    of --compare_nanogpt) before its timing tables, which take minutes: a damaged one is refused at once."""
    if damaged == "retrieval":
        source = tmp_path / "kazqad.jsonl"
        source.write_text('{"title": "T", "context": "C",\n')
        args, fragment = [f"--retrieval={source}"], "line 1 is not JSON"
    else:
        nano, data = tmp_path / "nanoGPT", tmp_path / "data"
        for f in ("train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"):
            (nano / f).parent.mkdir(parents=True, exist_ok=True)
            (nano / f).write_text("")
        data.mkdir()
        for f in ("train.bin", "val.bin"):
            (data / f).write_bytes(b"\0\0" * 100)
        (data / "meta.json").write_text("{")
        args, fragment = [f"--compare_nanogpt={nano}", f"--data_dir={data}"], "meta.json is unreadable"
    proc = run("bench.py", *args, f"--json={tmp_path / 'bench.json'}", check=False, timeout=60)  # default --models
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize("script, args, fragment", [
    ("data/qazdata_char/prepare.py", ["--source=/dev/zero"], "--source /dev/zero is not a regular file"),
    ("data/kkwiki/prepare.py", ["--source=/dev/zero"], "--source /dev/zero is not a regular file"),
    ("sample.py", ["/dev/zero"], "config file /dev/zero is not a regular file"),
    ("sample.py", ["--start=FILE:{tmp}"], "is a folder, not a file (from --start=FILE:"),
    ("sample.py", ["--start=FILE:"], "--start=FILE: names no file"),
    ("plot.py", ["--out_dir={tmp}"], "log.jsonl is a folder, not a file"),
])
def test_inputs_that_are_no_regular_file(script, args, fragment, tmp_path):
    """A path given as an input that is a device (reading /dev/zero to its end never ends), or a
    folder where a file belongs, is one line naming what it is, quickly (before any model loads),
    and no file is written."""
    (tmp_path / "log.jsonl").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = [f"--out_dir={tmp_path / 'out'}"] if "prepare" in script else []
    proc = run(script, *args, *out, check=False, timeout=120)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_an_output_that_is_no_regular_file_is_refused_unread(special, tmp_path):
    """Whether an earlier run wrote an output path is learnt by reading it: /dev/zero never ends and a
    pipe waits for a writer, so such a path is refused by what it is before anything reads it."""
    from kazgpt.files import check_output
    path = tmp_path / special if special == "fifo" else Path(special)
    if special == "fifo":
        os.mkfifo(path)

    def must_not_read(p):
        raise AssertionError(f"{p} was read")

    with pytest.raises(UserError, match="is not a regular file"):
        check_output(path, must_not_read, "results")


@pytest.mark.parametrize("script", ["bench.py", "eval_qa.py"])
def test_scripts_refuse_a_pipe_for_their_results(script, trained, tmp_path):
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    args = (["--models=quickstart", f"--json={fifo}"] if script == "bench.py" else
            [f"--out_dir={trained / 'out'}", "--device=cpu", f"--output={fifo}",
             f"--source={write_jsonl(tmp_path / 'k.jsonl', make_examples(2))}"])
    assert_one_line_error(run(script, *args, check=False, timeout=60), f"{fifo} is not a regular file")


@pytest.mark.parametrize("train_py, fragment", [
    ("print('hello')", "logged no 'iter N: ... time Xms' lines or saved no checkpoint"),
    ("raise SystemExit('boom')", "nanogpt's run failed (exit 1): boom"),
    ("import sys; sys.exit(3)", "nanogpt's run failed (exit 3): no error output"),
    ("import torch, os; print('iter 0: loss 1.0, time 5.0ms'); os.makedirs('out', exist_ok=True); "
     "torch.save({'iter_num': 100, 'weights': 1}, 'out/ckpt.pt')", "checkpoint at an eval could not be scored"),
])
def test_bench_comparison_refuses_a_train_py_it_cannot_read(train_py, fragment, tmp_path):
    """--compare_nanogpt runs another repo's train.py: one that fails, logs nothing it can read, or
    saves checkpoints of another shape is one line naming what went wrong, not a traceback."""
    import bench

    (tmp_path / "train.py").write_text(train_py + "\n")
    with pytest.raises(UserError, match=re.escape(fragment)):
        bench.run_quick_start("nanogpt", [], tmp_path, tmp_path / "out", 0, tmp_path / "val.bin")


@pytest.mark.parametrize("offline", ["", "1"])
def test_hub_load_failure_says_how_to_use_the_cache(monkeypatch, offline):
    """GPT-2 weights or KazQAD that the hub cannot serve (no network: ~30 s of the hub client's
    retries) say how to take them from the Hugging Face cache at once, unless HF_HUB_OFFLINE says so."""
    from kazgpt import checkpoint, kazqad
    from model import GPT

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(GPT, "from_pretrained", unreachable)
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    with pytest.raises(UserError) as refused:
        checkpoint.load_pretrained("gpt2")
    assert "could not load the GPT-2 model 'gpt2' (OSError)" in str(refused.value)
    assert ("set HF_HUB_OFFLINE=1" in str(refused.value)) == (offline == "")
    monkeypatch.setattr("datasets.load_dataset", unreachable)
    with pytest.raises(UserError) as refused:
        kazqad.read_kazqad_examples(None)  # no --source, no $KAZQAD_SOURCE: the hub
    assert "could not load issai/kazqad" in str(refused.value)
    assert ("set HF_HUB_OFFLINE=1" in str(refused.value)) == (offline == "")
