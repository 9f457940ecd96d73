"""Signals while the ``edgeseg`` command starts.

Starting it imports click, numpy and every command's module, a quarter of a second and more on a
busy machine. A Ctrl-C or SIGTERM meanwhile ends the process at once with the command's one line
and 130 / 143: nothing has been read or written yet, and Python would print the traceback of the
import it stopped. :func:`started` (called once the commands are registered) puts the handlers
back for the command, which installs its own.
"""

from __future__ import annotations

import os
import signal
import threading

from edgeseg.stopping import stop_line_wanted

_LINES = {signal.SIGINT: (b"edgeseg: interrupted\n", 130),
          signal.SIGTERM: (b"edgeseg: stopped (SIGTERM)\n", 128 + signal.SIGTERM)}
_previous: dict[int, object] = {}


def _stop_while_starting(signum, frame) -> None:
    line, status = _LINES[signum]
    if stop_line_wanted():
        os.write(2, line)
    os._exit(status)


def started() -> None:
    """The command is ready: Ctrl-C and SIGTERM reach it as they did before it started."""
    while _previous:
        signum, handler = _previous.popitem()
        signal.signal(signum, handler)


def starting() -> None:
    """Until :func:`started`, Ctrl-C and SIGTERM end the process with one line (main thread only)."""
    if threading.current_thread() is threading.main_thread() and not _previous:
        for signum in _LINES:
            _previous[signum] = signal.signal(signum, _stop_while_starting)
