"""Writing files so that a stop at any moment (Ctrl-C, kill, a full disk) leaves the old files or
the new ones, never a mix or a half: each file goes to a temporary name beside its target (hidden,
marked as this repo's so that only such files are ever cleaned up), and the finished files are
renamed into place together, with SIGINT and SIGTERM held for those few renames.

Outputs that a script writes where a user points it (eval_qa's per-question results, plot.py's
image, bench.py's JSON, export_hf.py's folder) replace only a file that the same script made
before: check_output refuses anything else."""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
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
    (made_here tells), before any work is done. A device or a pipe is refused unread: made_here
    would read /dev/zero forever, or wait on a pipe."""
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise UserError(f"{path} is not a regular file (a device, pipe or socket): name a file for the {what}")
    if path.is_dir() and not made_here(path):
        raise UserError(f"{path} is a folder: name a file for the {what}")
    if path.exists() and not path.is_dir() and not made_here(path):
        raise UserError(f"{path} exists and was not written by this script: choose another path for the {what} "
                        "(or move that file away)")
    if not path.parent.is_dir():
        raise UserError(f"the folder of {path} does not exist: create it, or choose another path for the {what}")


# where an earlier run's files wait while the run that replaces it starts; each state is a folder
# name, and each change of state one rename, so that a kill at any moment leaves a state that the next
# start can finish (put_back_interrupted_replacement)
SET_ASIDE = ".kazgpt-replaced"
_FILLING, _RESTORING, _DELETING = (f"{SET_ASIDE}-filling", f"{SET_ASIDE}-restoring", f"{SET_ASIDE}-deleting")


class SetAside:
    """The named files of folder moved into a hidden folder beside them instead of being deleted,
    until replaced() deletes them (the new files have proven themselves) or put_back() returns them
    (the new ones are removed). A process that exits before either, by an exception or sys.exit,
    puts them back on its way out; one killed outright leaves them for
    put_back_interrupted_replacement."""

    def __init__(self, folder: Path, names: tuple[str, ...]):
        self.folder, self.names = folder, names
        present = [name for name in names if (folder / name).exists()]
        self.pending = bool(present)
        if not self.pending:
            return
        filling = folder / _FILLING
        try:
            with signals_held():
                filling.mkdir()
                for name in present:
                    os.replace(folder / name, filling / name)
                os.replace(filling, folder / SET_ASIDE)  # complete
        except OSError as e:  # a full disk (mkdir), a failing device: back as it was
            with contextlib.suppress(OSError):
                if filling.exists():
                    _move_back(filling, folder)
            raise UserError(f"could not set the earlier files of {folder} aside ({e.strerror or e}); they are "
                            "where they were: free disk space, or check the folder's permissions") from None
        atexit.register(self.put_back)

    def replaced(self) -> None:
        if self.pending:
            self.pending = False
            try:
                _delete(self.folder / SET_ASIDE, self.folder / _DELETING)
            except OSError as e:  # the new files stand: say so, and go on (the next start deletes them)
                print(f"warning: could not delete the earlier files set aside in {self.folder / SET_ASIDE} "
                      f"({e.strerror or e}): delete them by hand", file=sys.stderr, flush=True)

    def put_back(self) -> None:
        if self.pending:
            self.pending = False
            _restore(self.folder, self.names)


def _delete(aside: Path, deleting: Path) -> None:
    os.replace(aside, deleting)
    shutil.rmtree(deleting)


def _move_back(source: Path, folder: Path) -> None:
    for path in source.iterdir():
        os.replace(path, folder / path.name)
    source.rmdir()


def _restore(folder: Path, names: tuple[str, ...]) -> None:
    """The new files of names out of folder, and the set-aside ones back in."""
    with signals_held():
        for name in names:
            (folder / name).unlink(missing_ok=True)
        os.replace(folder / SET_ASIDE, folder / _RESTORING)
        _move_back(folder / _RESTORING, folder)


def put_back_interrupted_replacement(folder: Path, names: tuple[str, ...], replaced_by: tuple[str, ...]) -> bool:
    """Finish what a process killed while replacing folder's files left: files set aside are put
    back unless the new files include one of replaced_by (then the replacement had proven itself
    and they are deleted). True when earlier files were put back."""
    # only folders: a user's file of one of these names is not this repo's to touch
    if (folder / _DELETING).is_dir():
        shutil.rmtree(folder / _DELETING)
    for unfinished in (_FILLING, _RESTORING):  # killed while moving files one way or the other: finish the move
        if (folder / unfinished).is_dir():
            _move_back(folder / unfinished, folder)
            return True
    if not (folder / SET_ASIDE).is_dir():
        return False
    if any((folder / name).exists() for name in replaced_by):
        _delete(folder / SET_ASIDE, folder / _DELETING)
        return False
    _restore(folder, names)
    return True
