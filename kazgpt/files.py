"""Writing files so that a stop at any moment (Ctrl-C, kill, a full disk) leaves the old files or
the new ones, never a mix or a half: each file goes to a temporary name beside its target (hidden,
marked as this repo's so that only such files are ever cleaned up), and the finished files are
renamed into place together, with SIGINT and SIGTERM held for those few renames.

Outputs that a script writes where a user points it (eval_qa's per-question results, plot.py's
image, bench.py's JSON, export_hf.py's folder) replace only a file that the same script made
before: check_output refuses anything else."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Callable, Union

from kazgpt.cli import UserError

TEMPORARY_MARK = ".kazgpt-tmp"


def temporary_name(path: Path) -> Path:
    """Where a file is written before it is renamed to path: a hidden name that marks it as this repo's."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> None:
    """Delete the temporary files of the named targets that a process killed while writing left in
    folder (only those)."""
    for name in names:
        for stale in folder.glob(f".{name}{TEMPORARY_MARK}*"):
            stale.unlink()


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM wait until the block ends (in the main thread; elsewhere nothing changes)."""
    try:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (ValueError, AttributeError):
        held = None
    try:
        yield
    finally:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_old(target: Path) -> Path:
    """A second name for the file at target (a hard link, or a copy where links are not allowed),
    so that target can be put back if the commit fails."""
    old = target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}-old")
    old.unlink(missing_ok=True)
    try:
        os.link(target, old)
    except OSError:
        shutil.copy2(target, old)
    return old


def commit(written: dict[Path, Path], obsolete: tuple[Path, ...] = ()) -> None:
    """Rename finished temporary files (temporary -> target) into place and delete the obsolete
    files, all or none: a signal waits until the end, and a rename that fails puts every file
    already replaced back (each old file keeps a second name until the commit is done)."""
    targets = [*written.values(), *(p for p in obsolete if p.is_file())]
    with signals_held():
        old, done = {}, []
        try:
            for target in targets:
                if target.is_file():
                    old[target] = _keep_old(target)
            for tmp, target in written.items():
                os.replace(tmp, target)
                done.append(target)
            for target in obsolete:
                target.unlink(missing_ok=True)
        except BaseException:
            for target in done:  # the new files out, the old ones back
                if target in old:
                    os.replace(old.pop(target), target)
                else:
                    target.unlink(missing_ok=True)
            for target in obsolete:
                if target in old and not target.exists():
                    os.replace(old.pop(target), target)
            raise
        finally:
            for kept in old.values():
                kept.unlink(missing_ok=True)
    for folder in {target.parent for target in targets}:
        fsync_folder(folder)


def write_files_atomically(folder: Path, contents: dict[str, Union[bytes, str]],
                           written: dict[Path, Path] | None = None, obsolete: tuple[str, ...] = ()) -> None:
    """Write the named files of folder (bytes, or str as UTF-8), and commit them together with
    temporary files already written (temporary -> target) and the deletion of the obsolete names
    (files of an earlier version that the new one does not have). A failure removes every temporary
    file and leaves folder as it was."""
    written = dict(written or {})
    try:
        for name, data in contents.items():
            tmp = temporary_name(folder / name)
            written[tmp] = folder / name
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        commit(written, tuple(folder / name for name in obsolete))
    except BaseException as e:
        for tmp in written:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(e, OSError):
            raise UserError(f"could not write {folder} ({e.strerror or e}); what was there is unchanged: "
                            "free disk space or write elsewhere") from None
        raise


def check_output(path: Path, made_here: Callable[[Path], bool], what: str) -> None:
    """Refuse an output path that is a folder, or an existing file that this script did not make
    (made_here tells), before any work is done."""
    if path.is_dir() and not made_here(path):
        raise UserError(f"{path} is a folder: name a file for the {what}")
    if path.exists() and not path.is_dir() and not made_here(path):
        raise UserError(f"{path} exists and was not written by this script: choose another path for the {what} "
                        "(or move that file away)")
    if not path.parent.is_dir():
        raise UserError(f"the folder of {path} does not exist: create it, or choose another path for the {what}")
