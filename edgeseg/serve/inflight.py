"""The bytes the server holds for requests in flight, bounded by one budget.

A request count does not bound memory: a 1 MB ``.nii.gz`` may inflate to a volume of 2 GiB, so a
queue of 64 uploads may hold far more than the machine has. Each request takes the bytes of its
decoded input from a :class:`ByteBudget` and gives them back when it is answered. An upload takes
its volume's bytes as its reader computes them from the file's header, before the pixels are
allocated (``edgeseg.limits.volume_sizes_to``); a ``/v2`` tensor, already bounded by the body
limit, takes its bytes once decoded and before it is queued. A request that would take the held
bytes over the budget is refused (the server answers 503); one larger than the whole budget
could never run and is refused as too large (413).
"""

from __future__ import annotations

import threading

from edgeseg.serve.batcher import QueueFull

BUDGET_OPTION = "--max-inflight-bytes"


class BudgetFull(QueueFull):
    """The request's bytes would take the bytes in flight over the budget; the server answers 503."""


class OverBudget(Exception):
    """The request alone needs more than the whole budget; the server answers 413."""


class ByteBudget:
    """At most ``limit`` bytes held at once, by any number of holders (thread-safe); refusals
    name the budget as ``option`` sets it and what holds it (``holders``)."""

    def __init__(self, limit: int, option: str = BUDGET_OPTION, holders: str = "requests in flight",
                 name: str = "in-flight budget") -> None:
        if limit < 1:
            raise ValueError(f"the {name} ({option}) must be positive, got {limit}")
        self.limit = int(limit)
        self.option, self.holders, self.name = option, holders, name
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes held now."""
        return self._held

    def take(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` more for ``what`` (named in the refusal); BudgetFull or OverBudget
        when they do not fit."""
        if nbytes > self.limit:
            raise OverBudget(f"{what} needs {nbytes} bytes, more than the whole {self.name} of {self.limit} "
                             f"bytes ({self.option})")
        with self._lock:
            if self._held + nbytes > self.limit:
                raise BudgetFull(f"{what} needs {nbytes} bytes and {self.holders} hold {self._held} of the "
                                 f"{self.name} of {self.limit} bytes ({self.option})")
            self._held += nbytes

    def give(self, nbytes: int) -> None:
        """Give back ``nbytes`` taken by :meth:`take`."""
        with self._lock:
            self._held -= nbytes

    def holding(self, what: str) -> "Holding":
        """A holder for one request, giving back all it took when its ``with`` block ends."""
        return Holding(self, what)


class Holding:
    """The bytes one request holds; :meth:`grow` takes more as their size becomes known."""

    def __init__(self, budget: ByteBudget, what: str) -> None:
        self._budget, self.what = budget, what
        self.nbytes = 0
        self.refusal: Exception | None = None  # kept: a reader may wrap the exception in its own

    def grow(self, nbytes: int, source: object = None) -> None:
        """Hold ``nbytes`` in all (a reader may size one volume more than once); the refusal is
        raised and kept in ``refusal``."""
        extra = int(nbytes) - self.nbytes
        if extra <= 0:
            return
        try:
            if nbytes > self._budget.limit:  # all it holds counts: it could never be held whole
                budget = self._budget
                raise OverBudget(f"{self.what} needs {int(nbytes)} bytes, more than the whole {budget.name} of "
                                 f"{budget.limit} bytes ({budget.option})")
            self._budget.take(extra, self.what)
        except (BudgetFull, OverBudget) as exc:
            self.refusal = exc
            raise
        self.nbytes += extra

    def __enter__(self) -> "Holding":
        return self

    def __exit__(self, *exc_info) -> None:
        self._budget.give(self.nbytes)
        self.nbytes = 0
