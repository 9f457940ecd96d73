"""SIGTERM (``kill``, a batch system's or a service manager's stop) stops a command as Ctrl-C does.

The handler raises :class:`Terminated`, a KeyboardInterrupt, in the main thread, so what cleans
up after Ctrl-C (DataLoader workers, child interpreters, partial files) runs for it too. A
signal can land anywhere, also inside a library's import or a C extension, which may turn it
into another error or leave half-made state; loops that spend their time in such code (the
training loop) therefore take the stop at their own safe points: inside
:func:`stop_at_checkpoints` the handler only records it and :func:`check_stop` raises it.
:func:`stops_held` holds back Ctrl-C too, for the few steps that must not be cut in two (the
renames that put a set of outputs in place).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


_state = {"defer": 0, "pending": False, "received": False}

# Set for the processes `edgeseg train --nproc N` starts: the launching command reports a stop
# (one line for the run), so the N training processes stop without a line of their own.
STOP_REPORTED_ABOVE = "EDGESEG_STOP_REPORTED_ABOVE"


# Set for the same processes: a folder where each leaves its one-line error (``rank-R.txt``)
# instead of printing it, for the launching command to print one line for the run; N processes
# failing alike (a divergence, a full disk) would otherwise print it N times.
ERRORS_REPORTED_ABOVE = "EDGESEG_ERRORS_REPORTED_ABOVE"


def report_error_above(text: str) -> bool:
    """Leave this process's one-line error (without the ``edgeseg: error:`` prefix) for the
    command that started it under torchrun; False where there is none (or the folder is gone),
    and the process prints the line itself."""
    folder = os.environ.get(ERRORS_REPORTED_ABOVE)
    if not folder:
        return False
    try:
        with open(os.path.join(folder, f"rank-{int(os.environ.get('RANK', '0'))}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
    except (OSError, ValueError):
        return False
    return True


def stop_line_wanted() -> bool:
    """Whether this process should print its "stopped" / "interrupted" line."""
    return os.environ.get(STOP_REPORTED_ABOVE) != "1"


def _handler(signum, frame) -> None:
    _state["received"] = True
    # recorded in either case: a Terminated raised where Python ignores exceptions (a __del__,
    # a callback) is lost, and the next check_stop then raises it again
    _state["pending"] = True
    if not _state["defer"]:
        raise Terminated


def received() -> bool:
    """Whether a SIGTERM arrived while :func:`sigterm_stops` was in force (an error raised after
    it may be the stop landing inside a library)."""
    return _state["received"]


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM stops the block (main thread only; elsewhere nothing changes); the previous
    handler is restored after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.update(defer=0, pending=False, received=False)
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        _state["pending"] = False  # a stop not taken inside the block must not stop later code


@contextlib.contextmanager
def stop_at_checkpoints() -> Iterator[None]:
    """Within the block a SIGTERM is only recorded; :func:`check_stop` raises it, and so does
    leaving the block normally with one recorded."""
    _state["defer"] += 1
    try:
        yield
    finally:
        _state["defer"] -= 1
    check_stop()


def stop_pending() -> bool:
    """Whether a SIGTERM was recorded and not yet acted on (:func:`check_stop` would raise it)."""
    return _state["pending"]


def check_stop(elsewhere: bool = False) -> None:
    """Raise :class:`Terminated` if a SIGTERM was recorded and not yet acted on, or when
    ``elsewhere`` says that another process of the same job took one (the processes of a
    distributed training stop together, at the same step: ``train.distributed.check_stop_together``)."""
    if _state["pending"] or elsewhere:
        _state["pending"] = False
        raise Terminated


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) and SIGTERM for the block, then act on them as usual.

    Meant for a few quick steps that must happen all or none (renaming a set of outputs into
    place): a signal arriving meanwhile is only recorded, and delivered again once the block
    ends, normally or by an exception, to the handler that was in force before (a Ctrl-C then
    raises KeyboardInterrupt, a SIGTERM under :func:`sigterm_stops` raises Terminated). A
    signal that is ignored, or whose handler is not Python's, is left alone. Handlers can only
    be set in the main thread: elsewhere only a SIGTERM is held (as :func:`stop_at_checkpoints`).
    When both came, whichever first, SIGTERM is delivered first: a stop asked for by the system
    (a service manager, a container runtime) wins over a Ctrl-C, which is delivered after it only
    where SIGTERM's handler returned (it records, say); one that raised (Terminated) or ended the
    process already stops it.
    """
    if threading.current_thread() is not threading.main_thread():
        with stop_at_checkpoints():
            yield
        return
    held: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None and handler != signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum in held:
                signal.raise_signal(signum)  # the handler runs before this returns
