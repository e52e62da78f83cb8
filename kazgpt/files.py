"""Reading text files (one-line errors for what is not UTF-8 or not JSON), and the one way this
repo writes a file: atomically. The data goes to a temporary name beside the
target, is flushed to disk, and is then renamed over the target, so a crash, a kill or a full disk
at any moment leaves the old file or the new one, never half of one. Checkpoints, datasets, the
BM25 index, exports, images and evaluation results are all written through it."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Iterator, Union

from kazgpt.cli import UserError


def temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_write(path: Union[str, Path], mode: str = "wb") -> Iterator[IO]:
    """`with atomic_write(path) as f:` writes f to path when the block ends without an error;
    otherwise path is left as it was. A folder that does not exist is a one-line error."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        raise UserError(f"cannot write {path} ({e.strerror}): check that its folder exists and is writable") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Union[str, Path], text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder that becomes `folder` (which must not exist yet) when the block ends without error."""
    tmp = temporary(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        os.replace(tmp, folder)
    except (FileNotFoundError, PermissionError) as e:
        raise UserError(f"cannot write {folder} ({e.strerror}): check that its parent folder exists") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}): convert it to UTF-8 first") from None


def json_lines(text: str, path: Path, expected: str) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of JSON Lines text; a line that is not JSON is
    refused with its number and what was expected."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not JSON ({e.msg}): expected {expected}") from None
