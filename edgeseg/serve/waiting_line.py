"""A first-in first-out line of requests waiting for the model, which a request leaves the moment
its caller gives up on it.

A request that times out (504) or whose client leaves (499) cancels its Future. Left in a plain
queue, it would keep its place until the worker next took from the queue, and while the model is
busy (a long upload, the other model's batch) a queue full of such requests would refuse every
new one with 503 and count them as waiting in ``/metrics``. Here the cancellation itself takes it
out of the line, so its place is free again at once and whatever it holds (its input) is dropped.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

Item = TypeVar("Item")


class WaitingLine(Generic[Item]):
    """Items, each with the Future its caller waits on, oldest first (thread-safe)."""

    def __init__(self) -> None:
        self._items: deque[tuple[Item, Future]] = deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def join(self, item: Item, future: Future, room: int | None = None) -> bool:
        """Put ``item`` at the end unless ``room`` items already wait (then False); it leaves
        the line as soon as ``future`` is cancelled."""
        with self._ready:
            if room is not None and len(self._items) >= room:
                return False
            self._items.append((item, future))
            self._ready.notify()
        # the callback holds the line, never the item: an item holding its future would make a
        # cycle, and its arrays would outlive the request until the garbage collector ran
        future.add_done_callback(self._discard)
        return True

    def _discard(self, future: Future) -> None:
        if not future.cancelled():
            return
        with self._ready:
            for index, (_, waiting) in enumerate(self._items):
                if waiting is future:
                    del self._items[index]
                    return

    def take(self, timeout: float | None, fits: Callable[[Item], bool] = lambda item: True) -> Item | None:
        """The oldest item, waiting up to ``timeout`` seconds for one (None: without end); None
        where none came, or where the oldest does not ``fit`` (it stays first in line)."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                return None
            if not fits(self._items[0][0]):
                return None
            return self._items.popleft()[0]

    def drain(self) -> list[Item]:
        """Take every item out of the line at once, oldest first (the line's worker has stopped)."""
        with self._ready:
            items = [item for item, _ in self._items]
            self._items.clear()
        return items


def claim(future: Future) -> bool:
    """Mark ``future`` running for whoever calls first, its worker or a closing queue refusing it;
    False where it was cancelled or another caller claimed it already."""
    try:
        return future.set_running_or_notify_cancel()
    except RuntimeError:  # running or finished: claimed by the other side
        return False
