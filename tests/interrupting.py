"""A real Ctrl-C between two of the renames that put a set of outputs in place.

:func:`interrupted_between_renames` runs Python code (by default the edgeseg command) in a fresh
interpreter that sends itself SIGINT right after the first of the outputs changes on disk. That
is checked as each call returns inside edgeseg's atomic-write modules, the only code that renames
outputs into place, so the signal lands between two renames whatever does them.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

WATCH = r"""
import os, signal, sys

outputs = sys.argv.pop(1).split(os.pathsep)

def state(path):
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns

before = [state(p) for p in outputs]

def watch(frame, event, arg):
    if event in ("return", "c_return") and os.sep + "atomic" in frame.f_code.co_filename \
            and [state(p) for p in outputs] != before:
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGINT)

sys.setprofile(watch)
"""

RUN_EDGESEG = """
from edgeseg.cli.main import cli
cli(prog_name="edgeseg")
"""


def ctrl_c_as_at_a_terminal() -> None:
    """For a child process (``preexec_fn``): SIGINT's default disposition, so that Python installs
    its Ctrl-C handler. A test run started in the background by a non-interactive shell (``nohup
    make test &``) has SIGINT ignored, an ignored signal stays ignored across exec, and Python
    then leaves it ignored: the Ctrl-C a test sends would never arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupted_between_renames(outputs: list[Path], *args, code: str = RUN_EDGESEG) -> subprocess.CompletedProcess:
    """Run ``code`` (with ``args`` as its sys.argv[1:]) and Ctrl-C it after the first of ``outputs`` changed."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", WATCH + code, os.pathsep.join(map(str, outputs)), *map(str, args)],
                          capture_output=True, text=True, timeout=600, env=env, preexec_fn=ctrl_c_as_at_a_terminal)


def snapshot(outputs: list[Path]) -> dict[Path, tuple[int, str]]:
    """Each output's inode and sha256 (a folder's: of its files' names and bytes): a file or
    folder renamed into its place has another inode."""
    def digest(path: Path) -> str:
        if not path.is_dir():
            return hashlib.sha256(path.read_bytes()).hexdigest()
        return hashlib.sha256(repr([(p.name, digest(p)) for p in sorted(path.iterdir())]).encode()).hexdigest()

    return {p: (p.stat().st_ino, digest(p)) for p in outputs}


def assert_whole_set(outputs: list[Path], before: dict[Path, tuple[int, str]]) -> bool:
    """Every output is the earlier one (same file, same bytes) or every one is new; True if new."""
    now = snapshot(outputs)
    new = {p.name: now[p] != before[p] for p in outputs}
    assert len(set(new.values())) == 1, f"a mix of new and earlier outputs: {new}"
    return next(iter(new.values()))


def stopped_once(proc: subprocess.CompletedProcess) -> None:
    """The edgeseg command stopped as Ctrl-C stops it: exit status 130 and its one line."""
    assert proc.returncode == 130 and proc.stderr == "edgeseg: interrupted\n", (proc.returncode, proc.stderr)
