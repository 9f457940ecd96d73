"""click's CliRunner for in-process ``edgeseg`` runs, giving the tests what a run in a process of
its own would show them:

- what is written straight to file descriptor 2 during the run (OpenVINO's and ONNX Runtime's C++
  logs, a child process's stderr) is added to the result's ``stderr`` and ``output``, where the
  tests' "one line, no traceback" checks read it: click captures ``sys.stderr`` alone;
- a hang guard: a run still going after ``hang_limit_s`` fails its test with the command and
  every thread's stack, where it would otherwise stall its test worker until the CI job's limit.
  A watchdog thread sends the guard's SIGALRM to the main thread itself (``pthread_kill``, so
  no other thread takes it) and counts the margin after it while the process runs. When the main
  thread cannot take the signal (blocked in native code), the watchdog names the command, writes
  the stacks to the test process's stderr and ends the process at twice the limit, at least
  30 s of its running time after it (pytest-xdist then reports the test the worker crashed in);
- torch's, numpy's and Python's global random states are put back after the run: a command that
  seeds them (a training, or a refusal that comes after training has seeded) would otherwise
  change what every later test of the same worker draws.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import random
import signal
import sys
import tempfile
import threading
from typing import IO, Iterator

import numpy as np
from click.testing import CliRunner, Result

# An in-process command that runs for a quarter of an hour has hung: the longest ones (a tiny
# training, a sweep report) take well under a minute on a loaded two-core machine.
HANG_LIMIT_S = 900.0
# The last resort comes at least this long after the limit, counted while the test process runs: a
# command that swallowed the guard's exception returns within milliseconds, but a test process on a
# loaded 2-core machine stalls for seconds at times (a whole-suite run lost its worker at 2 x 1 s,
# and a CI run its worker in a 1 s test with 10 s of margin).
LAST_RESORT_MARGIN_S = 30.0
# A copy of the test process's own stderr, taken by keep_test_process_stderr() (tests/conftest.py)
# while pytest's capture is off: the watchdog's last words reach the terminal or CI log there,
# where pytest's capture file would end with the process, unread.
_process_stderr: int | None = None
# torch's default generator seed at import (c10's default_rng_seed_val): what a command that
# imports torch for the first time leaves behind once its seeding is undone.
TORCH_DEFAULT_SEED = 67280421310721


def keep_test_process_stderr() -> None:
    """Keep a copy of descriptor 2 as it is now; call from pytest_configure, where pytest's
    capture is not on."""
    global _process_stderr
    _process_stderr = os.dup(2)


class CommandHung(BaseException):
    """A guarded run went past its limit. A BaseException, so that neither click's runner nor a
    command's own ``except Exception`` turns it into an exit status a test might accept."""


class GuardedCliRunner(CliRunner):
    """``CliRunner`` whose ``invoke`` captures file descriptor 2, guards against hangs and keeps
    the global random states (see the module docstring)."""

    def __init__(self, *args, hang_limit_s: float = HANG_LIMIT_S, margin_s: float = LAST_RESORT_MARGIN_S,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hang_limit_s = hang_limit_s
        self.margin_s = margin_s

    def invoke(self, cli, args=None, *rest, **kwargs) -> Result:
        words = [args] if isinstance(args, str) else list(args or [])
        command = " ".join(["edgeseg", *map(str, words)])
        with _random_states_kept(), _Fd2Capture() as fd2:
            with _hang_guard(command, self.hang_limit_s, self.margin_s, fd2):
                result = super().invoke(cli, args, *rest, **kwargs)
        result.stderr_bytes = (result.stderr_bytes or b"") + fd2.data
        result.output_bytes += fd2.data
        return result


class _Fd2Capture:
    """File descriptor 2 pointed at a temporary file while the context is open; ``data`` holds
    what was written there, ``saved`` the descriptor 2 had before (open while the context is)."""

    def __init__(self) -> None:
        self.data = b""
        self.saved = -1
        self.file: IO[bytes] | None = None

    def __enter__(self) -> _Fd2Capture:
        sys.stderr.flush()  # Python-level text written before the run stays where it was going
        self.file = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def text(self) -> str:
        """What has been written to descriptor 2 so far."""
        self.file.flush()
        return os.pread(self.file.fileno(), os.fstat(self.file.fileno()).st_size, 0).decode(errors="replace")

    def __exit__(self, *exc) -> None:
        os.dup2(self.saved, 2)
        restored, saved = os.fstat(2), os.fstat(self.saved)
        assert (restored.st_dev, restored.st_ino) == (saved.st_dev, saved.st_ino), "descriptor 2 was not put back"
        os.close(self.saved)
        self.data = self.text().encode()
        self.file.close()


@contextlib.contextmanager
def _hang_guard(command: str, limit_s: float, margin_s: float, fd2: _Fd2Capture) -> Iterator[None]:
    """After ``limit_s`` the watchdog thread sends SIGALRM to the main thread, whose handler
    raises CommandHung with every thread's stack; if that never gets through, the watchdog ends
    the process (after the limit and again as long, at least ``margin_s`` more)."""
    done = threading.Event()
    last_words = fd2.saved if _process_stderr is None else _process_stderr
    on_main = threading.current_thread() is threading.main_thread()
    fired: list[str] = []
    if on_main:
        def hung(signum, frame):
            if done.is_set():  # sent just as the run ended: its Python handler runs after the end
                return
            faulthandler.dump_traceback(fd2.file, all_threads=True)
            fired.append(f"{command}: still running after {limit_s:g} s (the in-process hang guard); "
                         f"its stderr and every thread's stack:\n{fd2.text()}")
            raise CommandHung(fired[0])

        previous = signal.signal(signal.SIGALRM, hung)
    after_s = limit_s + max(limit_s, margin_s)
    main_id = threading.main_thread().ident if on_main else None
    watchdog = threading.Thread(target=_watch, args=(command, limit_s, after_s, main_id, last_words, done),
                                daemon=True, name="hang-guard")
    watchdog.start()
    try:
        yield
        if fired:  # a catch-all in the command (a plugin loader's) took CommandHung: the run still hung
            raise CommandHung(fired[0])
    finally:
        done.set()
        watchdog.join()  # no signal is sent after this
        if on_main:
            # signal.signal runs a signal still pending first: ``hung`` sees ``done`` and returns
            signal.signal(signal.SIGALRM, previous)


def _watch(command: str, limit_s: float, after_s: float, main_id: int | None, fd: int,
           done: threading.Event) -> None:
    if done.wait(limit_s):
        return
    if main_id is not None:
        signal.pthread_kill(main_id, signal.SIGALRM)
    # the rest is counted in one-second steps: a test process stopped or starved past both
    # deadlines (a paused machine, an overloaded one) wakes with one step gone, not all of them,
    # so its main thread still has the margin to answer the signal it wakes to
    for _ in range(math.ceil(after_s - limit_s)):
        if done.wait(1.0):
            return
    os.write(fd, f"{command}: still running after {after_s:g} s, its main thread deaf to the hang guard's "
                 f"signal; ending the test process. Every thread's stack:\n".encode())
    faulthandler.dump_traceback(fd, all_threads=True)
    os._exit(70)


@contextlib.contextmanager
def _random_states_kept() -> Iterator[None]:
    """Python's, numpy's and torch's global random states (torch's CUDA ones too, where CUDA is
    in use) as they were before the context, after it."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch = sys.modules.get("torch")
    try:
        if torch is None:
            yield
        else:
            with torch.random.fork_rng():
                yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        if torch is None and "torch" in sys.modules:  # imported by the command
            sys.modules["torch"].manual_seed(TORCH_DEFAULT_SEED)
