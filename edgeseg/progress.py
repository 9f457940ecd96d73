"""Progress on stderr, one implementation for every command.

A command shows progress in one of three ways, chosen when a bar is made:

- stderr is a terminal: a live tqdm bar, redrawn in place and erased when it closes;
- stderr is a file or a pipe (a job scheduler's log, systemd's journal, CI): whole lines, one when
  another 10 % is done (at most one every ``interval / 6`` seconds) and one at least every
  ``interval`` seconds (``EDGESEG_PROGRESS_INTERVAL``, default 30) while work goes on, and a last
  line when work that printed any ends; never a carriage return, so a log holds no fragments;
- not shown (``--quiet``, or a library call that asked for none): nothing, and no tqdm object,
  whose monitor thread would otherwise outlive the call.

Bars still open when a command fails are closed by :func:`close_all` before the error line is
written, so that line starts a line of its own on a terminal too.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

INTERVAL_ENV = "EDGESEG_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0
STEP_PERCENT = 10

_open: list["_Bar"] = []
_open_lock = threading.Lock()


def line_interval() -> float:
    """Seconds between progress lines in a log (``EDGESEG_PROGRESS_INTERVAL``; 0 writes a line at
    every update). A value that is not a number >= 0 falls back to the default: a progress
    setting is not worth failing a training run over."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str, unit: str,
             shown: bool = True) -> "_Bar":
    """A progress bar on stderr for ``total`` units of work (or the items of ``iterable``).

    Use it as a context manager, call ``update(n)`` as work is done, or iterate over it when an
    iterable is given; ``set_postfix(name=value)`` adds figures such as a loss. ``shown=False``
    (``--quiet``) gives a bar that draws nothing. How it is drawn follows stderr (see the module
    docstring)."""
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not shown:
        return _Bar(iterable, total)
    stream = sys.stderr
    bar: _Bar = (_LiveBar if _is_terminal(stream) else _LineBar)(iterable, total, desc, unit, stream)
    with _open_lock:
        _open.append(bar)
    return bar


def close_all() -> None:
    """Close every bar still open (a command failed inside one): a terminal's bar is erased and
    the cursor left at the start of a line; a log gets no closing line for unfinished work."""
    with _open_lock:
        bars = list(_open)
    for bar in reversed(bars):
        bar.close(finished=False)


def write_line(text: str) -> None:
    """Write one line to stderr without tearing a live bar (log records go through here)."""
    with _open_lock:
        live = any(isinstance(bar, _LiveBar) for bar in _open)
    if live:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class _Bar:
    """A bar that shows nothing; the base of the two that do."""

    def __init__(self, iterable: Iterable | None, total: int | None, *_: Any) -> None:
        self.iterable = iterable
        self.total = total
        self.n = 0

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self.close(finished=exc_type is None)

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        finished = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            finished = True
        finally:
            self.close(finished=finished)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += n

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the count (e.g. ``loss=0.1234``)."""

    def close(self, finished: bool = True) -> None:
        """End the bar; ``finished`` False after an error."""
        with _open_lock:
            if self in _open:
                _open.remove(self)


class _LiveBar(_Bar):
    """tqdm on a terminal, erased when it closes."""

    def __init__(self, iterable, total, desc: str, unit: str, stream: TextIO) -> None:
        super().__init__(iterable, total)
        from tqdm import tqdm

        self._tqdm = tqdm(total=total, desc=desc, unit=unit, leave=False, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        super().update(n)
        self._tqdm.update(n)

    def set_postfix(self, **values: Any) -> None:
        self._tqdm.set_postfix(values, refresh=False)

    def close(self, finished: bool = True) -> None:
        super().close(finished)
        self._tqdm.close()


class _LineBar(_Bar):
    """Whole lines for a log: ``segmenting: 300/600 slices (50%), 12 s``."""

    def __init__(self, iterable, total, desc: str, unit: str, stream: TextIO) -> None:
        super().__init__(iterable, total)
        self.desc, self.unit, self.stream = desc, unit, stream
        self.interval = line_interval()
        self.start = self.last = time.monotonic()
        self.step_done = 0  # the last 10 % step a line was written for
        self.lines = 0
        self.postfix = ""
        self.closed = False
        self.last_n = 0  # the count the last line showed

    def update(self, n: int = 1) -> None:
        super().update(n)
        now = time.monotonic()
        since = now - self.last
        step = self._step()
        if since >= self.interval or (step > self.step_done and since >= self.interval / 6):
            self._write(now)
            self.step_done = step

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self, finished: bool = True) -> None:
        super().close(finished)
        if self.closed:
            return
        self.closed = True
        # work that wrote no line was short: a closing line would be its only one, and noise
        if finished and self.lines and self.last_n != self.n:
            self._write(time.monotonic(), done=True)

    def _step(self) -> int:
        if not self.total:
            return 0
        return min(100, self.n * 100 // self.total) // STEP_PERCENT

    def _write(self, now: float, done: bool = False) -> None:
        many = (self.total or self.n) != 1
        unit = self.unit + ("es" if self.unit.endswith(("ch", "sh", "s", "x")) else "s") if many else self.unit
        count = f"{self.n}/{self.total} {unit} ({self.n * 100 // self.total}%)" if self.total else f"{self.n} {unit}"
        elapsed = f"{'done in ' if done else ''}{_seconds(now - self.start)}"
        extra = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"{self.desc}: {count}, {elapsed}{extra}\n")
        self.stream.flush()
        self.last, self.last_n = now, self.n
        self.lines += 1


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
