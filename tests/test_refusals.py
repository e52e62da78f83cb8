"""The mistakes users really make, script by script: each is one `error:` line on stderr that says
what to do, exit code 2, no traceback, and the run folder it was pointed at unchanged. Then the
promises about run folders: a folder is a run once it holds a checkpoint, --overwrite replaces a
run only when the new one saves, and resuming takes the newest checkpoint."""
import errno
import hashlib
import json
import shutil

import pytest
import torch

from kazgpt.cli import UserError, run_main
from kazgpt.files import atomic_write
from conftest import (TINY_MODEL, assert_one_line_error, prepare_char_dataset, read_log, run, write_jsonl,
                      write_kazqad_source)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prepared char dataset and a short run (ckpt.pt, best.pt, log.jsonl)."""
    root = tmp_path_factory.mktemp("refusals")
    prepare_char_dataset(root, 20)
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={root / 'data'}", f"--out_dir={root / 'out'}",
        *TINY_MODEL, "--max_iters=4", "--eval_interval=2")
    return root


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def train(trained, out, *args, data=None, env=None):
    return run("train.py", "config/train_qazdata_char.py", f"--data_dir={data or trained / 'data'}",
               f"--out_dir={out}", *TINY_MODEL, "--max_iters=6", *args, env=env, check=False)


def damage_checkpoint(path, how):
    if how == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "version1":  # saved before QK-norm became a LayerNorm: the same file, another function
        torch.save({**torch.load(path, weights_only=True), "version": 1}, path)
    else:  # a field missing
        state = torch.load(path, weights_only=True)
        del state[how]
        torch.save(state, path)


# (script, arguments, what the error line says); {run} is a copy of the trained run, {new} a folder
# that does not exist yet, {data} the prepared dataset
TRAIN = "train.py config/train_qazdata_char.py --data_dir={data} " + " ".join(TINY_MODEL)
CASES = [
    (TRAIN + " --out_dir={new} --lerning_rate=1e-3", "unknown config key 'lerning_rate' in the command line (did "
                                                     "you mean 'learning_rate'?)"),
    (TRAIN + " --out_dir={new} --batch_size=many", "batch_size must be int, got 'many'"),
    (TRAIN + " --out_dir={new} --batch_size=0", "batch_size must be at least 1, got 0"),
    (TRAIN + " --out_dir={new} --max_iters=-1", "max_iters must be at least 0"),
    (TRAIN + " --out_dir={new} --learning_rate=0", "learning_rate must be above 0"),
    (TRAIN + " --out_dir={new} --dropout=1", "dropout must be at least 0, below 1"),
    (TRAIN + " --out_dir={new} --optimizer=sgd", "optimizer must be 'adamw' or 'muon', got 'sgd'"),
    (TRAIN + " --out_dir={new} --n_head=3", "n_embd (32) must be a multiple of n_head (3)"),
    (TRAIN + " --out_dir={new} --device=cuda", "no CUDA GPU"),
    (TRAIN + " --out_dir={new} --device=tpu", "unknown device 'tpu'"),
    (TRAIN + " --out_dir={new} --dtype=float16", "float16 autocast is only used on CUDA"),
    (TRAIN + " --out_dir={new} --dtype=fp8", "dtype must be 'float32' or 'bfloat16' or 'float16', got 'fp8'"),
    (TRAIN + " --out_dir={new} --data_dir= --dataset=qazdata_chr", "unknown dataset 'qazdata_chr' (did you mean "
                                                                    "'qazdata_char'?)"),
    ("train.py config/nope.py --out_dir={new}", "config file config/nope.py does not exist"),
    (TRAIN + " --out_dir={run}", "already holds a run (ckpt.pt, best.pt): continue it with --init_from=resume"),
    (TRAIN + " --out_dir={run} --init_from=resume --n_layer=3", "n_layer=3 cannot be honoured"),
    (TRAIN + " --out_dir={run} --init_from=resume --optimizer=adamw", "resume with --optimizer=muon"),
    (TRAIN + " --out_dir={new} --init_from=resume", "no checkpoint in"),
    (TRAIN + " --out_dir={new} --init_from=gpt3", "init_from must be scratch, resume, a run"),
    (TRAIN + " --out_dir={new} --init_from=gpt2", "could not load 'gpt2' ("),
    (TRAIN + " --out_dir={new} --init_from=someone/kazgpt", "could not load 'someone/kazgpt' ("),
    (TRAIN + " --out_dir={run}/ckpt.pt", "is a file, not a folder"),
    (TRAIN + " --out_dir={new} --data_dir={new}", "dataset 'new' is not prepared"),
    (TRAIN + " --out_dir={new} --block_size=100000", "fewer tokens than block_size+1"),
    (TRAIN + " --out_dir={run} --init_from=resume ?garbage", "is damaged or not a checkpoint of this repo"),
    (TRAIN + " --out_dir={run} --init_from=resume ?truncated", "is damaged or not a checkpoint of this repo"),
    (TRAIN + " --out_dir={run} --init_from=resume ?tokenizer", "lacks its 'tokenizer'"),
    (TRAIN + " --out_dir={run} --init_from=resume ?iter_num", "lacks its 'iter_num'"),
    (TRAIN + " --out_dir={run} --init_from=resume ?optimizer", "training state does not load"),
    (TRAIN + " --out_dir={new} --init_from={run}/ckpt.pt ?model_args", "lacks its 'model_args'"),
    ("sample.py --out_dir={run} --start=Өзен€✓", "outside this model's vocabulary: '€' '✓'"),
    ("sample.py --out_dir={run} --start=FILE:{new}/prompt.txt", "prompt.txt does not exist (from --start"),
    ("sample.py --out_dir={run} --temperature=0", "temperature must be above 0"),
    ("sample.py --out_dir={run} --top_p=1.5", "top_p must be above 0, at most 1, got 1.5"),
    ("sample.py --out_dir={run} --init_from=gpt3", "could not load 'gpt3'"),
    ("sample.py --init_from={data}", "holds neither a run of this repo (ckpt.pt, best.pt) nor a transformers model"),
    ("sample.py --out_dir={new}", "no checkpoint in"),
    ("sample.py --out_dir={run} --checkpoint=ckpt.pt ?tokenizer", "lacks its 'tokenizer'"),
    ("sample.py --out_dir={run} ?version1", "has the RMS QK-norm of this repo before"),
    ("eval_qa.py --out_dir={run} --modes=reading,nope", "--modes must be a comma-separated list"),
    ("eval_qa.py --out_dir={run} --limit=0", "limit must be at least 1"),
    ("eval_qa.py --out_dir={run} --checkpoint=ckpt.pt ?truncated", "is damaged"),
    ("export_hf.py --out_dir={run} --export_dir={run}", "exists: choose a new --export_dir"),
    ("export_hf.py --out_dir={run} --checkpoint=ckpt.pt --export_dir={new} ?iter_num", "lacks its 'iter_num'"),
    ("plot.py --out_dir={new}", "log.jsonl does not exist"),
    ("plot.py --out_dir={run} --png={new}/x.jpg", ".png, .pdf, .svg"),
    ("plot.py --out_dir={run} --png={new}/x.png", "cannot write"),
    ("bench.py --models=nope", "unknown model 'nope'"),
    ("data/qazdata_char/prepare.py --out_dir={new} --source={new}/missing", "does not exist"),
    ("data/qazdata_char/prepare.py --out_dir={new} --sorce=x", "unrecognized arguments: --sorce=x"),
    ("data/qazdata_qa/prepare.py --out_dir={new} --tokenizer={new}", "is not prepared"),
]


@pytest.mark.parametrize("command, fragment", CASES, ids=[f"{c.split()[0]}-{i}" for i, (c, _) in enumerate(CASES)])
def test_one_line_and_nothing_lost(trained, tmp_path, command, fragment):
    folder = tmp_path / "run"
    shutil.copytree(trained / "out", folder)
    words = command.format(run=folder, new=tmp_path / "new", data=trained / "data").split()
    damage = [w[1:] for w in words if w.startswith("?")]
    for how in damage:
        for name in ("ckpt.pt", "best.pt"):
            damage_checkpoint(folder / name, how)
    before = snapshot(folder)
    proc = run(words[0], *[w for w in words[1:] if not w.startswith("?")], check=False)
    assert_one_line_error(proc, fragment)
    assert snapshot(folder) == before
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_prepare_sources(tmp_path):
    out = tmp_path / "out"
    prep = lambda *a, env=None: run("data/qazdata_char/prepare.py", f"--out_dir={out}", *a, env=env, check=False)
    assert_one_line_error(prep(env={"KAZQAD_SOURCE": str(tmp_path / "gone")}),
                          f"$KAZQAD_SOURCE {tmp_path / 'gone'} does not exist")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Қазақ".encode("utf-8") + b"\xe9t\xe9\n\nmore")
    assert_one_line_error(prep(f"--source={bad}"), "is not UTF-8")
    schema = write_jsonl(tmp_path / "wrong-train.jsonl", [{"text": "no question here"}])
    assert_one_line_error(prep(f"--source={schema}"), "not in KazQAD's schema", "missing context, question, answers")
    notjson = tmp_path / "notjson.jsonl"
    notjson.write_text("{broken\n")
    assert_one_line_error(prep(f"--source={notjson}"), "line 1 is not JSON")
    assert_one_line_error(prep(env={"KAZQAD_SOURCE": ""}), "could not load issai/kazqad", "--source=PATH")
    prep(f"--source={write_kazqad_source(tmp_path / 'src', 4)}")
    before = snapshot(out)
    assert_one_line_error(prep(f"--source={notjson}"), "line 1 is not JSON")
    assert snapshot(out) == before  # a failed prepare leaves the dataset that was there


def test_overwrite_replaces_a_run_only_when_the_new_one_saves(trained, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(trained / "out", out)
    before = snapshot(out)
    for args in (["--eval_only"], ["--max_iters=0"], ["--init_from=gpt2"], ["--n_head=3"]):  # no checkpoint saved
        proc = train(trained, out, "--overwrite", *args)
        assert proc.returncode in (0, 2), proc.stderr
        assert snapshot(out) == before, args
    run("train.py", "config/train_qazdata_char.py", f"--data_dir={trained / 'data'}", f"--out_dir={out}",
        *TINY_MODEL, "--max_iters=3", "--eval_interval=3", "--keep_checkpoints=latest", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "log.jsonl"]  # the earlier best.pt is gone
    assert [e["iter"] for e in read_log(out) if "val_loss" in e] == [0, 3]  # the new run's log only


def test_a_run_that_saved_nothing_is_no_run(trained, tmp_path):
    """A run stopped before its first checkpoint (here: its loss became inf) leaves a log but no
    checkpoint; the corrected command into the same folder is not refused."""
    out = tmp_path / "out"
    proc = train(trained, out, "--learning_rate=1e30", "--muon_lr=1e30", "--eval_interval=1000")
    assert_one_line_error(proc, "the loss became")
    assert not any((out / name).exists() for name in ("ckpt.pt", "best.pt"))
    train_ok = train(trained, out, "--max_iters=2", "--eval_interval=2")
    assert train_ok.returncode == 0, train_ok.stderr
    assert [e["iter"] for e in read_log(out) if "val_loss" in e] == [0, 2]


def test_resume_takes_the_newest_checkpoint(trained, tmp_path):
    """After a leg that kept only best.pt, the next resume starts from whichever of ckpt.pt and best.pt
    is newer, never from the older one."""
    out = tmp_path / "out"
    train(trained, out, "--max_iters=2", "--eval_interval=2")
    train(trained, out, "--init_from=resume", "--max_iters=8", "--eval_interval=2", "--keep_checkpoints=best")
    newest = max(torch.load(out / n, weights_only=True)["iter_num"] for n in ("ckpt.pt", "best.pt"))
    proc = train(trained, out, "--init_from=resume", "--max_iters=10", "--eval_interval=2")
    assert f"at iteration {newest}" in proc.stdout and newest > 2


def test_the_index_folder_is_the_repos_wherever_the_script_runs(tmp_path, monkeypatch):
    from kazgpt import retrieval

    monkeypatch.setattr(retrieval, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    retrieval.open_index([retrieval.Passage("Абай", "Абай Құнанбайұлы ақын."), retrieval.Passage("", "Екі")])
    assert len(list((tmp_path / "repo" / "data" / "bm25").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_a_full_disk_is_one_line_and_the_old_file_stays(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"old")

    def main(argv):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    assert run_main(main, []) == 2
    assert capsys.readouterr().err.startswith(f"error: the disk is full ({path})")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_out_of_memory_is_one_line(capsys):
    def main(argv):
        torch.empty(2**62, dtype=torch.uint8)

    assert run_main(main, [], memory_hint="use a smaller --batch_size") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory") and "--batch_size" in err and len(err.splitlines()) == 1


def test_a_several_line_message_is_one_line(capsys):
    def main(argv):
        raise UserError("wandb could not start (first line\n  second line)")

    assert run_main(main, []) == 2
    assert capsys.readouterr().err == "error: wandb could not start (first line second line)\n"


def test_plot_skips_a_line_cut_short_by_a_kill(trained, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text((trained / "out" / "log.jsonl").read_text() + '{"iter": 7, "lo')
    run("plot.py", f"--out_dir={out}")
    assert (out / "loss.png").exists()
    assert json.loads((trained / "out" / "log.jsonl").read_text().splitlines()[0])["iter"] == 0


def test_a_checkpoint_write_that_fails_keeps_the_previous_one(tmp_path, monkeypatch):
    """torch's writer reports a full disk as a RuntimeError ('unexpected pos'): one line, and the
    checkpoint that was there still loads."""
    from kazgpt import checkpoint

    path = tmp_path / "ckpt.pt"
    checkpoint.save_checkpoint({"iter_num": 1}, path)

    def full(obj, f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 78208 vs 78160")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match="is the disk full"):
        checkpoint.save_checkpoint({"iter_num": 2}, path)
    assert torch.load(path, weights_only=True)["iter_num"] == 1 and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
