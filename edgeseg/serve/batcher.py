"""Dynamic micro-batching: concurrent requests share one model call, behind a bounded queue.

Requests wait in a queue of at most ``queue_size`` entries (a full queue is refused at once,
so memory stays bounded under overload). One worker thread takes the oldest request, gathers
whatever else arrives within ``max_delay`` seconds up to ``max_batch`` slices, runs the model
once on the concatenated batch and hands each caller its own rows. Where requests may differ
in slice size (the pipeline model), ``key`` groups them: only requests with the first one's key
join its batch; the next one with another key starts the following batch. A request whose caller
gives up (its Future cancelled) leaves the queue at once (``WaitingLine``), and one in a gathered
batch still waiting for the model lock is dropped from it: a batch starts when it holds the lock.

Each batch is timed as Triton's statistics count it: how long each request waited before its
batch started (``Ticket.queue_ns``, waiting for the model lock included), assembling the batch
(compute_input), the model call (compute_infer) and splitting the result into each request's
rows (compute_output).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from edgeseg.serve.waiting_line import WaitingLine, claim


class QueueFull(RuntimeError):
    """The request queue is full; the server answers 503."""


class Ticket(Future):
    """The Future of one request's rows; once it is done, ``queue_ns`` says how long the request
    waited before its batch started and ``infer_ns`` how long that batch's model call took."""

    queue_ns = 0
    infer_ns = 0


@dataclass(frozen=True)
class BatchTiming:
    """One model call: its slices and the nanoseconds of its three phases."""

    size: int
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass(eq=False)  # compared by identity: it holds an array
class _Pending:
    batch: np.ndarray
    future: Ticket = field(default_factory=Ticket)
    queued_ns: int = field(default_factory=time.perf_counter_ns)


class MicroBatcher:
    """Batch ``infer`` calls from many threads; ``submit`` returns a Future of the logits.

    Args:
        infer: the model call, (N, C, H, W) -> (N, K, H, W).
        max_batch: most slices in one model call.
        queue_size: most requests waiting; beyond it ``submit`` raises QueueFull.
        max_delay: seconds the worker waits for more requests to fill a batch.
        on_batch: called with the BatchTiming of every batch run (for statistics and metrics).
        key: requests join one batch only where ``key(batch)`` is equal (default: all may).
        lock: held while a batch is assembled and run (one model call at a time across batchers).
    """

    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch: int, queue_size: int = 64,
                 max_delay: float = 0.002, on_batch: Callable[[BatchTiming], None] | None = None,
                 key: Callable[[np.ndarray], object] | None = None, lock: threading.Lock | None = None) -> None:
        self._infer = infer
        self.max_batch = int(max_batch)
        self.max_delay = float(max_delay)
        self.queue_size = int(queue_size)
        self._line: WaitingLine[_Pending] = WaitingLine()
        self._gathered: list[_Pending] = []  # taken from the line, waiting for the model lock
        self._on_batch = on_batch
        self._key = key
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeseg-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting now (in the queue, or gathered into a batch waiting for the model)."""
        return len(self._line) + sum(not item.future.cancelled() for item in self._gathered)

    def submit(self, batch: np.ndarray) -> Ticket:
        """Queue ``batch`` (at most ``max_batch`` slices); QueueFull when the queue is full or
        the batcher is closed."""
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise ValueError(f"a request holds 1..{self.max_batch} slices, got {batch.shape[0]}")
        if self._stop.is_set():  # nobody would take it: refused now, not at its timeout
            raise QueueFull("the model's worker has stopped")
        pending = _Pending(batch)
        if not self._line.join(pending, pending.future, room=self.queue_size):
            raise QueueFull(f"request queue is full ({self.queue_size} waiting)")
        return pending.future

    def _gather(self) -> list[_Pending]:
        first = self._line.take(timeout=0.1)
        if first is None:
            return []
        items, rows = [first], first.batch.shape[0]
        deadline = time.monotonic() + self.max_delay

        def fits(item: _Pending) -> bool:  # one that does not stays first in the queue for the next batch
            return rows + item.batch.shape[0] <= self.max_batch and self._joins(first, item)

        while rows < self.max_batch:
            item = self._line.take(max(0.0, deadline - time.monotonic()), fits)
            if item is None:
                break
            items.append(item)
            rows += item.batch.shape[0]
        return items

    def _joins(self, first: _Pending, item: _Pending) -> bool:
        return self._key is None or self._key(first.batch) == self._key(item.batch)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._gathered = self._gather()
            if self._gathered:
                self._run_batch()

    def _run_batch(self) -> None:
        items: list[_Pending] = []
        try:
            with self._lock:  # waiting for the lock is queueing: the batch starts with it
                # a caller that gave up meanwhile has cancelled its future: the model is not spent on it
                items = [item for item in self._gathered if claim(item.future)]
                self._gathered = []
                if not items:
                    return
                started = time.perf_counter_ns()
                batch = items[0].batch if len(items) == 1 else np.concatenate([i.batch for i in items])
                assembled = time.perf_counter_ns()
                logits = self._infer(batch)
                inferred = time.perf_counter_ns()
            bounds = np.cumsum([0] + [item.batch.shape[0] for item in items])
            rows = [logits[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            timing = BatchTiming(batch.shape[0], assembled - started, inferred - assembled,
                                 time.perf_counter_ns() - inferred)
            if self._on_batch is not None:  # before any caller hears: its statistics include this batch
                self._on_batch(timing)
        except BaseException as exc:  # every caller must hear about the failure
            for item in items:
                item.future.set_exception(exc)
            return
        for item, part in zip(items, rows):
            item.future.queue_ns = started - item.queued_ns
            item.future.infer_ns = timing.infer_ns
            item.future.set_result(part)

    def stop(self) -> None:
        """Ask the worker to stop after the batch in flight, without waiting for it; requests still
        waiting (in the queue, or gathered for a batch that has not started) are refused at once
        with QueueFull, not left to their callers' timeouts."""
        self._stop.set()
        for item in [*self._line.drain(), *self._gathered]:
            if claim(item.future):
                item.future.set_exception(QueueFull("the model's worker stopped before the request's batch started"))

    def close(self) -> None:
        """:meth:`stop`, then wait (up to 5 s) for the worker to end."""
        self.stop()
        self._thread.join(timeout=5)
