"""eval_qa.py (metrics by hand, end to end), plot.py, wandb offline, interactive sampling and
bench.py's training rows."""
import json

import pytest

from conftest import TINY_MODEL, make_examples, prepare_char_dataset, run, write_jsonl
from kazgpt.metrics import exact_match, normalize_answer, token_f1


def test_normalization_and_metrics_by_hand():
    assert normalize_answer("  ӘЙГІЛІ «Абай»,  ҚҰНАНБАЙҰЛЫ! ") == "әйгілі абай құнанбайұлы"
    assert normalize_answer("ҒҚҢӨҰҮҺІ") == "ғқңөұүһі"
    assert exact_match("Абай Құнанбайұлы.", ["абай құнанбайұлы"]) == 1.0
    assert exact_match("Абай", ["абай құнанбайұлы"]) == 0.0
    # pred {абай}, gold {абай, құнанбайұлы}: precision 1, recall 1/2, F1 = 2/3
    assert token_f1("Абай", ["Абай Құнанбайұлы"]) == pytest.approx(2 / 3)
    # several golds: the best one counts
    assert token_f1("1845 жылы", ["1845", "1845 жылы 10 тамызда"]) == pytest.approx(max(2 / 3, 2 * 1 * 0.5 / 1.5))
    assert exact_match("1845", ["1845 жылы", "1845"]) == 1.0
    assert token_f1("", ["Абай"]) == 0.0 and token_f1("Сөз", ["—"]) == 0.0
    # punctuation splits words: 'Г.Мендель' is 'г мендель', so 'Г.' matches one of its two words
    assert token_f1("Г.", ["Г.Мендель"]) == pytest.approx(2 / 3)
    # repeated tokens count once each: pred 'ақ ақ ақ' vs gold 'ақ көл': common 1, P 1/3, R 1/2, F1 0.4
    assert token_f1("ақ ақ ақ", ["ақ көл"]) == pytest.approx(0.4)


@pytest.fixture(scope="module")
def trained_char(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    prepare_char_dataset(root, 20)
    run(
        "train.py",
        "config/train_qazdata_char.py",
        f"--data_dir={root / 'data'}",
        f"--out_dir={root / 'out'}",
        *TINY_MODEL,
        "--max_iters=150",
        "--lr_decay_iters=150",
        "--eval_interval=50",
        "--block_size=64",
    )
    return root


def test_eval_qa_end_to_end(trained_char):
    out = trained_char / "out"
    proc = run(
        "eval_qa.py", f"--out_dir={out}", f"--source={trained_char / 'src'}", "--split=validation", "--device=cpu"
    )
    assert "all 8 questions of the validation split" in proc.stdout
    assert "closed_book" in proc.stdout and "reading" in proc.stdout
    rows = [json.loads(row) for row in (out / "eval_qa_validation.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {r["mode"] for r in rows} == {"closed_book", "reading"}
    assert not any(r["asked_in_training"] for r in rows) and "also asked" not in proc.stdout
    for r in rows:  # the per-question scores are the metric applied to what was predicted
        assert r["em"] == exact_match(r["prediction"], r["answers"]) and r["f1"] == token_f1(
            r["prediction"], r["answers"]
        )
    for mode in ("closed_book", "reading"):  # the summary is the mean of the per-question scores
        line = next(x for x in proc.stdout.splitlines() if x.startswith(mode))
        n, em, f1 = line.split()[1:4]
        scored = [r for r in rows if r["mode"] == mode]
        assert int(n) == len(scored) == 8
        assert float(em) == round(100 * sum(r["em"] for r in scored) / 8, 1)
        assert float(f1) == round(100 * sum(r["f1"] for r in scored) / 8, 1)


def test_eval_qa_scores_questions_asked_in_training_apart(trained_char, tmp_path):
    """A validation question that the train split also asks is marked, and left out of the second table."""
    rows = make_examples(20)
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "kazqad-train.jsonl", rows[:32])
    write_jsonl(src / "kazqad-validation.jsonl", rows[32:] + [dict(rows[0], id="again")])
    proc = run("eval_qa.py", f"--out_dir={trained_char / 'out'}", f"--source={src}", "--modes=closed_book",
               "--device=cpu", f"--output={tmp_path / 'r.jsonl'}")
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results if r["asked_in_training"]] == ["again"]
    assert "1 of them are also asked" in proc.stdout
    unseen = proc.stdout.split("the 8 questions no training passage asks:")[1]
    n, em = next(line for line in unseen.splitlines() if line.startswith("closed_book")).split()[1:3]
    assert int(n) == 8 and float(em) == round(100 * sum(r["em"] for r in results if r["id"] != "again") / 8, 1)


def test_eval_qa_single_split_asks_held_out_only(trained_char, tmp_path):
    single = write_jsonl(tmp_path / "kazqad-validation.jsonl", make_examples(20))
    proc = run(
        "eval_qa.py",
        f"--out_dir={trained_char / 'out'}",
        f"--source={single}",
        "--modes=closed_book",
        "--device=cpu",
        f"--output={tmp_path / 'r.jsonl'}",
    )
    assert "4 questions of the 2 passages held out of training" in proc.stdout


def test_span_head_reads_answers_off_the_passage(trained_char, tmp_path):
    """A model finetuned with a span head answers reading questions with a span of the passage:
    eval_qa.py records where it starts, sample.py --context shows it in its place."""
    src, qa, out = trained_char / "src", tmp_path / "qa", tmp_path / "out"
    run("data/qazdata_qa/prepare.py", f"--source={src}", f"--tokenizer={trained_char / 'data'}", "--block_size=256",
        "--cloze=4", f"--out_dir={qa}")
    run("train.py", "config/finetune_qa.py", f"--data_dir={qa}", f"--out_dir={out}", "--init_from=scratch",
        "--span_head=True", *TINY_MODEL, "--block_size=256", "--max_iters=10", "--eval_interval=10")
    run("eval_qa.py", f"--out_dir={out}", f"--source={src}", "--modes=reading,closed_book", "--device=cpu")
    contexts = {r["id"]: r["context"] for r in make_examples(20)}
    rows = [json.loads(row) for row in (out / "eval_qa_validation.jsonl").read_text().splitlines()]
    reading = [r for r in rows if r["mode"] == "reading"]
    assert reading and all(r["prediction"] and r["prediction"] in contexts[r["id"]] and r["span_at"] >= 0
                           for r in reading)
    assert not any("span_at" in r for r in rows if r["mode"] == "closed_book")  # generated, not read
    title, passage = "Өзен", "Өзен ұзындығы 105 шақырым, ағысы күшті. Қазақстан Орталық Азияда орналасқан."
    lines = run("sample.py", f"--out_dir={out}", "--device=cpu", f"--context={title}\n{passage}",
                "--start=Өзеннің ұзындығы қанша?", "--num_samples=1").stdout.splitlines()
    shown = next(i for i, line in enumerate(lines) if line.startswith("[read at character "))
    answer = lines[shown - 1].removeprefix("Өзеннің ұзындығы қанша?:").strip()  # the line before: 'question: answer'
    shown = lines[shown]
    at = int(shown.removeprefix("[read at character ").split(":")[0])
    assert answer and f"«{answer}»" in shown and f"{title}\n{passage}"[at:at + len(answer)] == answer
    # what is asked is no number and the passage holds nothing else: no answer, and it says so
    lines = run("sample.py", f"--out_dir={out}", "--device=cpu", "--context=105\n105 105", "--start=Өзен не?",
                "--num_samples=1").stdout.splitlines()
    assert "Өзен не?:" in [line.rstrip() for line in lines] and "[no span of the passage fits this question]" in lines


def test_plot(trained_char, tmp_path):
    png = tmp_path / "curve.png"
    run("plot.py", f"--out_dir={trained_char / 'out'}", f"--png={png}")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_interactive_sampling(trained_char):
    proc = run(
        "sample.py",
        f"--out_dir={trained_char / 'out'}",
        "--device=cpu",
        "--interactive",
        "--max_new_tokens=30",
        env={"PYTHONIOENCODING": "utf-8"},
        input_text="Өзеннің ұзындығы қанша (1)?\n\nБұл не €?\nӨзен ұзындығы қанша?\n",
    )
    answers = proc.stdout.splitlines()
    assert len(answers) == 2  # one line per question; the bad one is reported on stderr and skipped
    assert "outside this model's vocabulary: '€'" in proc.stderr


def test_questions_about_a_passage(trained_char, tmp_path):
    """--context asks each question about a passage in the training layout (question, title line,
    passage, question): printed before the sample with --start, one answer line per question
    interactively."""
    passage = tmp_path / "passage.txt"
    passage.write_text("Т\nӨзен 101 км.\nАғысы күшті.\n", encoding="utf-8")  # fits the 64-character context
    proc = run("sample.py", f"--out_dir={trained_char / 'out'}", "--device=cpu", f"--context=FILE:{passage}",
               "--start=Ұзындығы?", "--num_samples=1", "--max_new_tokens=5")
    assert proc.stdout.startswith("Ұзындығы?\nТ\nӨзен 101 км. Ағысы күшті.\nҰзындығы?:")
    for extractive in ("True", "False"):
        proc = run("sample.py", f"--out_dir={trained_char / 'out'}", "--device=cpu", f"--context=FILE:{passage}",
                   "--start=Ұзындығы?", "--num_samples=3", "--max_new_tokens=12", f"--extractive={extractive}")
        answers = [s.split("?:", 1)[1].strip() for s in proc.stdout.split("---------------") if "?:" in s]
        assert len(answers) == 3 and all("\n" not in a for a in answers)
        if extractive == "True":  # spans of the title and passage, whatever the sampled model prefers
            assert all(a in "Т\nӨзен 101 км. Ағысы күшті." for a in answers), answers
    proc = run("sample.py", f"--out_dir={trained_char / 'out'}", "--device=cpu", "--interactive",
               f"--context=FILE:{passage}", "--max_new_tokens=20",
               input_text="Ұзындығы?\nӨзеннің ұзындығы қанша шақырым, ағысы күшті ме, қанша?\nАғысы?\n")
    assert len(proc.stdout.splitlines()) == 2  # the question too long for the context is reported, on stderr
    assert "cannot hold this question" in proc.stderr
    missing = run("sample.py", f"--out_dir={trained_char / 'out'}", "--device=cpu", "--interactive",
                  f"--context=FILE:{tmp_path / 'none.txt'}", check=False)
    assert missing.returncode == 2 and "none.txt does not exist (from --context" in missing.stderr


def test_wandb_offline(trained_char, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "out"
    run(
        "train.py",
        "config/train_qazdata_char.py",
        f"--data_dir={trained_char / 'data'}",
        f"--out_dir={out}",
        *TINY_MODEL,
        "--max_iters=4",
        "--eval_interval=2",
        "--wandb_log=True",
        "--wandb_project=kazgpt-test",
        "--wandb_run_name=offline",
        env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"},
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_closed_pipe_ends_quietly(trained_char):
    """`python sample.py | head -1`: when the reader goes away, no traceback."""
    import subprocess
    import sys

    from conftest import REPO

    proc = subprocess.Popen(
        [
            sys.executable,
            "sample.py",
            f"--out_dir={trained_char / 'out'}",
            "--device=cpu",
            "--num_samples=50",
            "--max_new_tokens=200",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in stderr, stderr


def test_bench_training_row_times_the_optimizer_step_apart(tmp_path):
    """bench.py's training rows give the clip and optimizer step as a part of the iteration (Muon's
    cost per step is read off them): a part, not the whole and not nothing."""
    out = tmp_path / "bench.json"
    run("bench.py", "--models=quickstart", "--iters=2", "--new_tokens=8", f"--json={out}")
    row = json.loads(out.read_text())["training"]["quickstart"]
    assert 0 < row["optimizer_ms"] < row["ms_per_iter"]
    assert 0 < row["optimizer_share"] < 1
