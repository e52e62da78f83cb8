"""Shared test helpers: where ../shared is, a small KazQAD-schema fixture, and running the
repo's scripts as a user would (`python <script>` from the repo root, through a server that
has imported torch already)."""
import json
import locale
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KAZGPT_SHARED", REPO.parent / "shared"))
KAZQAD_DIR = SHARED / "kazqad"
KAZQAD_VAL = KAZQAD_DIR / "kazqad-reading-comprehension-v1.0-kk-validation.jsonl"

sys.path.insert(0, str(REPO))
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


class ScriptServer:
    """The client of tests/script_server.py: scripts run in children forked from one process that
    has imported torch already, each as `python <script>` would run it (see there for the few
    differences)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def _read_reply(self, deadline: float | None) -> dict | None:
        """The next reply line, or None if the deadline passes first."""
        line = b""
        while not line.endswith(b"\n"):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.proc.stdout], [], [], wait)[0]:
                return None
            byte = os.read(self.proc.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError("tests/script_server.py ended unexpectedly")
            line += byte
        return json.loads(line)

    def run(self, script: str, args: tuple, env: dict, timeout: float, input_text: str | None
            ) -> subprocess.CompletedProcess:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "script_server.py")], cwd=REPO,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        encoding = env.get("PYTHONIOENCODING") or locale.getpreferredencoding(False)  # the child's, for all three
        with tempfile.TemporaryDirectory() as tmp:
            streams = {name: Path(tmp) / name for name in ("stdin", "stdout", "stderr")}
            if input_text is not None:
                streams["stdin"].write_text(input_text, encoding=encoding)
            request = {"script": script, "args": list(args), "cwd": str(REPO), "env": env,
                       "stdin": str(streams["stdin"]) if input_text is not None else None,
                       "stdout": str(streams["stdout"]), "stderr": str(streams["stderr"])}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            pid = self._read_reply(None)["pid"]
            try:
                reply = self._read_reply(time.monotonic() + timeout)
            except BaseException:  # Ctrl-C in the tests: the run goes with them, as subprocess.run's would
                os.kill(pid, signal.SIGKILL)
                raise
            if reply is None:
                os.kill(pid, signal.SIGKILL)
                self._read_reply(None)
                raise subprocess.TimeoutExpired([script, *args], timeout)
            return subprocess.CompletedProcess([sys.executable, script, *args], reply["returncode"],
                                               streams["stdout"].read_text(encoding=encoding),
                                               streams["stderr"].read_text(encoding=encoding))


SCRIPT_SERVER = ScriptServer()


def run(script: str, *args: str, env: dict | None = None, timeout: int = 600, check: bool = True,
        input_text: str | None = None, fresh: bool = False) -> subprocess.CompletedProcess:
    """python <script> <args> from the repo root; check=True asserts exit 0 and shows stderr otherwise.
    It runs in a child of the script server (no `import torch` to wait for), or with fresh=True in a
    new interpreter of its own (for what only a direct child shows, such as its resource usage)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if fresh:
        proc = subprocess.run([sys.executable, script, *args], cwd=REPO, env=full_env, capture_output=True,
                              text=True, timeout=timeout, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)
    else:
        proc = SCRIPT_SERVER.run(script, args, full_env, timeout, input_text)
    if check:
        assert proc.returncode == 0, (
            f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


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
