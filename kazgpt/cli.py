"""The command-line edge: every script runs its main(argv) through run_main, where a mistake of
the user's becomes one line on stderr and exit code 2, never a traceback. In a DDP run only rank 0
prints."""
from __future__ import annotations

import argparse
import difflib
import errno
import math
import os
import sys
from typing import Any, Callable, Iterable, Optional


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2."""


OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Unable to allocate")  # CPU, CUDA, MPS, numpy
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def run_main(main: Callable[[list[str]], Optional[int]], argv: Optional[list[str]] = None,
             memory_hint: str = "free some memory, or ask for less (see --help)") -> int:
    """Run a script's main(argv) and return its exit code: 0, 2 for a UserError, running out of
    memory or a full disk (one line each, with what to do), 130 for Ctrl-C."""
    try:
        return main(sys.argv[1:] if argv is None else argv) or 0
    except UserError as e:
        message = " ".join(str(e).split())  # one line, even where it quotes a several-line message
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and not any(mark in str(e) for mark in OUT_OF_MEMORY):
            raise
        message = f"out of memory ({type(e).__name__}): {memory_hint}"
    except BrokenPipeError:  # the reader went away (`python sample.py | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        message = f"the disk is full ({e.filename or e.strerror}): free some space; files written before are kept"
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the prepare scripts and bench.py: a bad option is one `error:` line (exit 2),
    not argparse's usage dump."""

    def __init__(self, doc: Optional[str]):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


BOUND_TESTS = {"min": (lambda v, b: v >= b, "at least"), "above": (lambda v, b: v > b, "above"),
               "max": (lambda v, b: v <= b, "at most"), "below": (lambda v, b: v < b, "below")}


def check_value(name: str, value: Any, bounds: dict) -> None:
    """A value against its declared bounds (min/max inclusive, above/below exclusive) or choices:
    the one check behind every script's settings and options."""
    if "choices" in bounds:
        ok = value in bounds["choices"]
    else:
        ok = math.isfinite(value) and all(BOUND_TESTS[k][0](value, b) for k, b in bounds.items())
    if not ok:
        raise UserError(f"{name} must be {bounds_text(bounds)}, got {value!r}")


def bounds_text(bounds: dict) -> str:
    """Bounds or choices as words: 'at least 1', 'above 0, at most 1', "'cosine' or 'wsd'"."""
    if "choices" in bounds:
        return " or ".join(map(repr, bounds["choices"]))
    return ", ".join(f"{BOUND_TESTS[k][1]} {b}" for k, b in bounds.items())


def bounded(kind: type, name: str, **bounds: float) -> Callable[[str], Any]:
    """An argparse `type` that converts an option's text to kind and checks it against bounds."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise UserError(f"{name} must be {kind.__name__}, got {text!r}") from None
        check_value(name, value, bounds)
        return value
    return convert


def is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, so that a DDP run logs each line once."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def closest(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def offline_hint() -> str:
    """For a hub load that failed: how to use the Hugging Face cache at once (unless already set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return ""
    return "set HF_HUB_OFFLINE=1 to use the Hugging Face cache without retrying the hub, or "
