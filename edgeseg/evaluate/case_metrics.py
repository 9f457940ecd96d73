"""The metrics of one evaluated case, computed in the evaluating process or in worker processes
beside the inference.

``edgeseg evaluate`` predicts a case, then scores it: Dice and IoU are cheap, HD95's surface
distances (a distance transform or a KD-tree per class) are not, and on large volumes they take
as long as the prediction. :class:`MetricWorkers` computes :func:`case_metrics` in ``workers``
separate processes while the evaluating process goes on predicting the next cases, as nnU-Net's
evaluation scores its cases in a process pool.

* Same results: a worker runs the same function on the same arrays, and the results are put
  back in the order the cases were read, so the report is the one the evaluating process alone
  writes (only the run's time and command line differ).
* Bounded memory: at most ``workers`` cases are in flight. :meth:`MetricWorkers.submit` waits
  for a case to finish before it hands over another, so the evaluating process holds the
  prediction and truth (uint8, one byte a voxel each) of at most ``workers`` cases besides the one
  it is predicting, and each worker a copy of one case's and the working memory of its HD95.
* Failures: a worker's error comes back as an error of the command (an ``EdgesegError`` as it is,
  anything else as one naming the case); a worker that ends without a result (killed, out of
  memory) is one too. Either way the remaining workers are stopped and nothing is written.
* Stopping: workers start with Ctrl-C blocked and then ignore it (a terminal sends it to every
  process of the group, a worker still starting included); the
  evaluating process stops them when it is interrupted or terminated (``close``), and a worker
  whose evaluating process is gone (SIGKILL) ends itself.

Workers are started with ``spawn``: a fork of a process running inference thread pools may inherit
a lock no thread will release (``edgeseg.runtime.fork_guard``). Each worker scores one case at a
time on one core (scipy's distance transforms are single-threaded); the inference keeps the
threads it has, so ``workers`` cores come on top of them (see docs/training.md, "Evaluation").
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.metrics import class_metrics, false_positive_slices, mean_slice_dice


def default_workers() -> int:
    """Metric worker processes when ``--workers`` is not given: one per 4 cores, at most 4. The
    inference keeps its threads on every core; on a shared 2-core machine one worker made the
    evaluation slower than none (docs/results.md), so below 4 cores there is none."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        cores = os.cpu_count() or 1
    return min(4, cores // 4)


def case_metrics(pred: np.ndarray, truth: np.ndarray, class_names: list[str], contiguous: bool,
                 grid: np.ndarray) -> dict[str, Any]:
    """The scored part of one case's result: per-class Dice, IoU and HD95 (``metrics``; HD95 per
    slice, in pixels, where the case is not ``contiguous``), false-positive slices, slices
    without each class and the mean per-slice Dice (also per class with several classes)."""
    classes = len(class_names)
    # grid (the volume's axes_mm) rather than spacing: a gantry-tilted series' distances depend on its shear
    metrics = class_metrics(pred, truth, classes, per_slice_hd=not contiguous, grid=grid)
    fp_slices = false_positive_slices(pred, truth, classes)
    part = {"metrics": {class_names[c]: m for c, m in metrics.items()},
            "false_positive_slices": {class_names[c]: n for c, n in fp_slices.items()},
            "slices_without_class": {class_names[c]: int((~(truth == c).any(axis=(1, 2))).sum())
                                     for c in range(1, classes)},
            "slice_dice_mean": mean_slice_dice(pred, truth, range(1, classes))}
    if classes > 2:
        part["slice_dice_by_class"] = {class_names[c]: mean_slice_dice(pred, truth, [c]) for c in range(1, classes)}
    return part


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT blocked in this thread for the block. Ctrl-C at a terminal reaches every process of
    its group, a worker still starting too, whose interpreter dies of it with a fatal error on the
    terminal before it can ignore it: a worker started here inherits the blocked signal. A Ctrl-C
    meanwhile reaches this process when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(parent: int) -> None:
    # Ctrl-C at a terminal reaches every process of its group: the evaluating process decides
    # what a stop means and ends the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(parent,), daemon=True, name="edgeseg-metric-watch").start()


def _end_with(parent: int, every: float = 0.5) -> None:
    from edgeseg.staging import process_alive

    # the pool's own check (its pipe closing) comes only once the case in hand is done
    while process_alive(parent):
        time.sleep(every)
    os._exit(0)


def _shared(pred: np.ndarray, truth: np.ndarray):
    """A shared-memory block holding ``pred`` then ``truth``; None where there is no room for it.

    Through the pool's pipe a case's arrays are pickled, written in pipe-sized pieces, read and
    unpickled, which took as long as their metrics on 512 x 512 phantoms (docs/results.md); a
    block is written once and read in place. Its pages are reserved first (``posix_fallocate``): a
    tmpfs too small for the case (a container's 64 MB /dev/shm) then refuses it here, where a
    write into a mapping past its room would end the process with SIGBUS."""
    from multiprocessing import shared_memory

    size = pred.nbytes + truth.nbytes
    try:
        shared = shared_memory.SharedMemory(create=True, size=max(1, size))
    except OSError:
        return None
    try:
        os.posix_fallocate(shared._fd, 0, max(1, size))  # no public way to the descriptor
    except (AttributeError, OSError):  # no posix_fallocate (macOS), or no room
        _release(shared)
        return None
    shared.buf[:pred.nbytes] = pred.reshape(-1).view(np.uint8)
    shared.buf[pred.nbytes:size] = truth.reshape(-1).view(np.uint8)
    return shared


def _release(shared) -> None:
    if shared is not None:
        shared.close()
        shared.unlink()


def _shared_case_metrics(name: str, shape: tuple[int, ...], pred_dtype: str, truth_dtype: str,
                         *args: Any) -> dict[str, Any]:
    """:func:`case_metrics` of the prediction and truth in shared-memory block ``name``."""
    from multiprocessing import shared_memory

    # attached, not made here: the evaluating process unlinks it. A spawned worker shares its
    # resource tracker, which unlinks the blocks of an evaluating process killed with SIGKILL.
    shared = shared_memory.SharedMemory(name=name)
    pred = np.ndarray(shape, np.dtype(pred_dtype), buffer=shared.buf)
    truth = np.ndarray(shape, np.dtype(truth_dtype), buffer=shared.buf, offset=pred.nbytes)
    try:
        return case_metrics(pred, truth, *args)
    finally:
        del pred, truth  # the mapping cannot close while an array uses it
        try:
            shared.close()
        except BufferError:  # an error's traceback still holds the arrays: the mapping goes with it
            shared = None


def _worker_ended(case_id: str) -> EdgesegError:
    return EdgesegError(f"a metric worker process ended without a result (killed, or out of memory?) by the time "
                        f"case {case_id} was to be scored; nothing was written")


class MetricWorkers:
    """``workers`` processes computing :func:`case_metrics`, at most ``workers`` cases in flight.

    Use as a context manager: leaving it by an exception (an error, Ctrl-C, SIGTERM) terminates
    the workers; leaving it normally waits for them to exit."""

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if workers < 1:
            raise EdgesegError(f"metric workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(os.getpid(),))
        self._pending: dict = {}  # future -> (slot, case id, its shared memory or None)

    def __enter__(self) -> "MetricWorkers":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(terminate=kind is not None)

    def submit(self, slot: int, case_id: str, pred: np.ndarray, truth: np.ndarray,
               *args: Any) -> list[tuple[int, dict[str, Any]]]:
        """Hand ``case_metrics(pred, truth, *args)`` of case ``slot`` to a worker, first waiting
        while ``workers`` cases are in flight; returns the (slot, result) of the cases finished
        meanwhile. The arrays go through shared memory where it has room (:func:`_shared`), else
        through the pool's pipe."""
        from concurrent.futures.process import BrokenProcessPool

        done = self._collect(block=len(self._pending) >= self.workers)
        shared = _shared(pred, truth)
        try:
            with _interrupts_held():  # a submit may start a worker
                if shared is None:
                    future = self._pool.submit(case_metrics, pred, truth, *args)
                else:
                    future = self._pool.submit(_shared_case_metrics, shared.name, pred.shape, pred.dtype.str,
                                               truth.dtype.str, *args)
        except BrokenProcessPool:  # a worker ended while idle
            _release(shared)
            raise _worker_ended(case_id) from None
        except BaseException:
            _release(shared)
            raise
        self._pending[future] = (slot, case_id, shared)
        return done

    def finish(self) -> list[tuple[int, dict[str, Any]]]:
        """Wait for every case in flight; their (slot, result) in the order they finished."""
        done = []
        while self._pending:
            done += self._collect(block=True)
        return done

    def _collect(self, block: bool) -> list[tuple[int, dict[str, Any]]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        if not self._pending:
            return []
        finished, _ = wait(list(self._pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        # slot order: which of several finished first says nothing about the results
        done = sorted(((self._pending.pop(f), f) for f in finished), key=lambda item: item[0][0])
        for (_, _, shared), _ in done:
            _release(shared)
        return [(slot, self._result(future, case_id)) for (slot, case_id, _), future in done]

    @staticmethod
    def _result(future, case_id: str) -> dict[str, Any]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool:
            raise _worker_ended(case_id) from None
        except (EdgesegError, MemoryError):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise EdgesegError(f"computing the metrics of case {case_id} failed in a worker process: "
                               f"{type(exc).__name__}: {text}") from None

    def close(self, terminate: bool = False) -> None:
        """Stop the workers: at once with ``terminate`` (an error or a stop: cases in flight are
        dropped), else once they are idle; either way wait until they have exited."""
        if terminate:
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):  # no public way before 3.14
                proc.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for _, _, shared in self._pending.values():
            _release(shared)
        self._pending.clear()
