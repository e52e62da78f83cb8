"""Runs the repo's scripts for the tests as `python <script> <args>` would, without paying for
`import torch` each time (2-3 s of every run on a 2-core CPU, most of what a refused run costs).

It is started once per test session (tests/conftest.py) and imports torch and numpy, nothing else
and no tensor op, so that no thread pool exists yet. For each request (one JSON line on stdin) it
forks; the child takes the request's working folder, environment, argv and standard streams (files),
puts the script's folder first on sys.path as the interpreter does, runs the script as __main__,
runs the atexit handlers and exits with the script's code (1 with a traceback for an uncaught
exception, as the interpreter). The server answers with the child's pid, then its exit code
(negative: the signal that killed it, as subprocess reports it). What a fresh interpreter would do
differently: modules imported here see the environment of the server's start, not the request's
(torch and numpy read none that the tests set), and all children share one hash seed.
"""
import atexit
import ctypes
import json
import locale
import os
import runpy
import signal
import sys
import traceback

import numpy  # noqa: F401  (imported for the children)
import torch  # noqa: F401


def redirect(fd: int, path: str, flags: int) -> None:
    target = os.open(path, flags, 0o644)
    os.dup2(target, fd)
    os.close(target)


def run_child(request: dict) -> int:
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    redirect(0, request["stdin"] or os.devnull, os.O_RDONLY)
    redirect(1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    redirect(2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    encoding = request["env"].get("PYTHONIOENCODING") or locale.getpreferredencoding(False)
    sys.stdin = open(0, encoding=encoding, closefd=False)
    sys.stdout = open(1, "w", encoding=encoding, closefd=False, buffering=1)  # PYTHONUNBUFFERED's line flushing
    sys.stderr = open(2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1)
    script = request["script"]
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def die_with_parent() -> None:
    """SIGKILL when the parent process ends (Linux), so that nothing outlives a killed test session."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: children may outlive a killed session
        pass


def main() -> None:
    die_with_parent()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                die_with_parent()
                os.close(replies.fileno())  # the replies are the server's to write
                code = run_child(request)
            finally:
                os._exit(code & 0xFF)
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


if __name__ == "__main__":
    main()
