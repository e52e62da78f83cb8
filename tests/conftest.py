"""Shared test helpers: where ../shared is, a small KazQAD-schema fixture, and running the
repo's scripts as a user would (`python <script>` from the repo root, its main(argv) run in this
process, or in a fresh interpreter where a signal or a kill is the point)."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KAZGPT_SHARED", REPO.parent / "shared"))
KAZQAD_DIR = SHARED / "kazqad"
KAZQAD_VAL = KAZQAD_DIR / "kazqad-reading-comprehension-v1.0-kk-validation.jsonl"

sys.path.insert(0, str(REPO))
from kazgpt.cli import run_main  # noqa: E402
if (SHARED / "tiktoken").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
os.environ.pop("KAZQAD_SOURCE", None)  # each test names its source


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


@pytest.fixture
def shared_kazqad() -> Path:
    if not KAZQAD_VAL.exists():
        pytest.skip(f"no KazQAD copy at {KAZQAD_DIR} (set KAZGPT_SHARED to the shared folder)")
    return KAZQAD_DIR


KAZAKH_LETTERS = "әғқңөұүһі ӘҒҚҢӨҰҮҺІ"


def make_examples(n_passages: int = 12, questions_per_passage: int = 2) -> list[dict]:
    """Small KazQAD-schema examples with every Kazakh-specific letter."""
    rows = []
    for p in range(n_passages):
        context = (f"Бұл {p}-мәтін. Қазақстан Орталық Азияда орналасқан. Оның астанасы Астана. "
                   f"Әріптер: {KAZAKH_LETTERS}. Өзен ұзындығы {100 + p} шақырым, ағысы күшті. ") * 3
        for q in range(questions_per_passage):
            rows.append({"id": f"{p}_{q}", "title": f"Тақырып {p}", "context": context,
                         "question": f"Өзеннің ұзындығы қанша ({p}-{q})?",
                         "answers": {"text": [f"{100 + p} шақырым"], "answer_start": [0]}})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


_SCRIPTS: dict[str, object] = {}


def script(path: str):
    """The module of a script of this repo (imported once, never run as __main__)."""
    if path not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"script_{len(_SCRIPTS)}", REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _SCRIPTS[path] = module
    return _SCRIPTS[path]


def run(path: str, *args: str, env: dict | None = None, timeout: int = 600, check: bool = True,
        input_text: str | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """python <path> <args> from the repo root; check=True asserts exit 0 and shows stderr otherwise.
    It runs the script's main(argv) in this process, through run_main as the script's own last line
    does, or with fresh=True as a new interpreter (for signals, kills and torchrun)."""
    if fresh:
        proc = subprocess.run([sys.executable, path, *args], cwd=REPO, env={**os.environ, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    else:
        saved_env, saved_argv, saved_cwd, saved_stdin = dict(os.environ), sys.argv, os.getcwd(), sys.stdin
        out, err = io.StringIO(), io.StringIO()
        try:
            os.environ.update(env or {})
            sys.argv, sys.stdin = [path, *args], io.StringIO(input_text or "")
            os.chdir(REPO)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = run_main(script(path).main, list(args))
                except SystemExit as e:  # --help
                    code = e.code or 0
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv, sys.stdin = saved_argv, saved_stdin
            os.chdir(saved_cwd)
        proc = subprocess.CompletedProcess([path, *args], code, out.getvalue(), err.getvalue())
    if check:
        assert proc.returncode == 0, f"{path} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n" \
                                     f"{proc.stderr[-3000:]}"
    return proc


def assert_one_line_error(proc, *fragments):
    """The promise for a user's mistake: one `error:` line holding each fragment, exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def write_kazqad_source(folder: Path, n_passages: int) -> Path:
    """KazQAD-schema train and validation files (the last fifth of the examples is validation)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = make_examples(n_passages)
    n_train = len(rows) * 4 // 5
    write_jsonl(folder / "kazqad-train.jsonl", rows[:n_train])
    write_jsonl(folder / "kazqad-validation.jsonl", rows[n_train:])
    return folder


def prepare_char_dataset(root: Path, n_passages: int) -> Path:
    """A char-level dataset prepared from a fixture source in root/src; returns root/data."""
    src = write_kazqad_source(root / "src", n_passages)
    run("data/qazdata_char/prepare.py", f"--source={src}", f"--out_dir={root / 'data'}")
    return root / "data"


def read_log(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines()]


GPT2_ARCHITECTURE = ["--position_encoding=learned", "--mlp_activation=gelu", "--qk_norm=False"]  # not the newer default
TINY_MODEL = [
    "--device=cpu",
    "--dtype=float32",  # not a timing's pick: runs that tests compare must train in the same precision
    "--compile=False",
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=32",
    "--batch_size=8",
    "--gradient_accumulation_steps=1",
    "--dropout=0.0",
    "--eval_iters=4",
    "--log_interval=1",
    "--warmup_iters=5",
    "--learning_rate=3e-3",
    "--min_lr=3e-4",
]


def wait_for_log_lines(log: Path, lines: int, timeout: float = 60.0) -> None:
    """Until a run's log.jsonl has `lines` lines (its loop is running), or the timeout passes."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= lines):
        time.sleep(0.1)
