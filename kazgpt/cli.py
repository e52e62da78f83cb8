"""The command-line edge: bad input becomes one line on stderr and exit code 2, never a traceback;
in a DDP run only rank 0 prints."""
from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional


class UserError(Exception):
    """Bad input from the user. Scripts report it as one line on stderr and exit with code 2."""


SEED_BITS = 62  # a seed seeds torch's generators, and train.py keys each batch by it as a 64-bit integer


def check_seed(seed: int) -> None:
    if not 0 <= seed < 2**SEED_BITS:
        raise UserError(f"seed must be a whole number from 0 to 2**{SEED_BITS}, got {seed}")


def hub_cache_hint() -> str:
    """For the message of a hub load that failed: how to take it from the Hugging Face cache at once
    (an unreachable hub is retried for ~30 s first), or nothing where HF_HUB_OFFLINE already says so."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return ""
    return "set HF_HUB_OFFLINE=1 to take it from the Hugging Face cache without retrying the hub, or "


@contextlib.contextmanager
def hub_warnings_held_back() -> Iterator[None]:
    """The Hugging Face hub client's warnings (one per failed request, and one per retry) held back
    while loading from it: the caller reports a load that fails as one line; progress bars stay."""
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils.logging  # noqa: F401  (importing it sets the level: set ours after)
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# how PyTorch and numpy say that an allocation failed: CPU, CUDA (torch.OutOfMemoryError), MPS, and a
# tensor whose byte count does not fit in 64 bits
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "Unable to allocate", "Storage size calculation overflowed")


def out_of_memory(e: BaseException) -> Optional[str]:
    """What a failed allocation asked for ('tried to allocate 20.00 GiB'), if e is one, else None."""
    if not isinstance(e, (MemoryError, RuntimeError)):
        return None
    text = str(e)
    if not isinstance(e, MemoryError) and not any(mark in text for mark in OUT_OF_MEMORY):
        return None
    size = re.search(r"allocate\s+([\d.,]+\s*[A-Za-z]+)", text)
    return f"tried to allocate {size.group(1)}" if size else type(e).__name__


LINE_BREAK = re.compile(r"\s*\n\s*")


def run_main(main: Callable[[], Any], memory_hint: str = "free some memory, or ask for less (see --help)") -> None:
    """Run a script's main(): a UserError becomes one clear line and exit code 2, no traceback; so
    does running out of memory, with memory_hint saying what to lower."""
    try:
        code = main()
    except UserError as e:  # one line, even where it quotes another library's several-line message
        print(f"error: {LINE_BREAK.sub(' ', str(e).strip())}", file=sys.stderr, flush=True)
        sys.exit(2)
    except (MemoryError, RuntimeError) as e:
        failed = out_of_memory(e)
        if failed is None:
            raise
        print(f"error: out of memory ({failed}): {memory_hint}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`python sample.py | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    sys.exit(code or 0)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the prepare scripts and bench.py, keeping the one-line promise: a bad option is
    a UserError (`error: ...`, exit code 2, no usage dump), not argparse's usage and message."""

    def __init__(self, doc: str):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def is_rank0() -> bool:
    """Whether this process prints: rank 0 of a DDP job, or any process whose RANK is unset or not a
    number (train.py then reports that RANK, once)."""
    return os.environ.get("RANK", "0").strip() in ("0", "-1", "") or not os.environ["RANK"].strip().isdigit()


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, so that a DDP run logs each line once."""
    if is_rank0():
        print(*args, **kwargs, flush=True)


def not_a_file(path: Path, folder_ok: bool = False) -> Optional[str]:
    """Why path cannot be read as an input file, or None: it does not exist, is a folder (unless
    folder_ok), or is no regular file (a device such as /dev/zero, a pipe, a socket), which reading
    to its end could never finish."""
    if path.is_file() or (folder_ok and path.is_dir()):
        return None
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "does not exist"


def shown(value: Any) -> str:
    """A value as an error line shows it: its repr, cut short (Python gives no repr of an int of
    more than 4300 digits)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def closest(name: str, known: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
