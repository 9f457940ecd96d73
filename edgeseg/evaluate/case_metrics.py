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
  anything else as one naming the case); a worker that ends without a result is one too, saying
  how it ended (a signal, or an exit status: a script without a ``__main__`` guard) and the cases
  lost. Either way the remaining workers are stopped and nothing is written.
* Stopping: workers start with Ctrl-C blocked and then ignore it (a terminal sends it to every
  process of the group, a worker still starting included); the
  evaluating process stops them when it is interrupted or terminated (``close``), and a worker
  whose evaluating process is gone (SIGKILL) ends itself. The shared-memory blocks of an
  evaluation killed with its whole process group are removed by the next one
  (:mod:`edgeseg.evaluate.shared_cases`).

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
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.evaluate.shared_cases import release, shared, sweep_orphans
from edgeseg.metrics import class_metrics, false_positive_slices, mean_slice_dice
from edgeseg.stopping import stops_held


CGROUP = Path("/sys/fs/cgroup")


def default_workers(cgroup: Path = CGROUP, membership: Path = Path("/proc/self/cgroup")) -> int:
    """Metric worker processes when ``--workers`` is not given: one per 4 cores, at most 4. The
    inference keeps its threads on every core; on a shared 2-core machine one worker made the
    evaluation slower than none (docs/results.md), so below 4 cores there is none. The cores are
    those :func:`effective_cores` counts: a container limited to 2 CPUs on a 16-core host has 2."""
    return min(4, effective_cores(cgroup, membership) // 4)


def effective_cores(cgroup: Path = CGROUP, membership: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process may use: those it may run on, fewer where its cgroup's CPU quota
    (``docker --cpus``, a Kubernetes CPU limit) allows less time than that, rounded down, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup, membership)
    return max(1, min(cores, int(quota))) if quota is not None else cores


def _quota(text: str, period: str | None = None) -> float | None:
    """Cores of a cgroup v2 ``cpu.max`` ("max 100000", "200000 100000") or of v1's
    ``cpu.cfs_quota_us`` with ``period`` (``cpu.cfs_period_us``); None: no limit."""
    fields = text.split() if period is None else [text.strip(), period.strip()]
    if len(fields) != 2 or fields[0] in ("max", "-1") or not all(f.isdigit() for f in fields) or int(fields[1]) == 0:
        return None
    return int(fields[0]) / int(fields[1])


def cgroup_cpu_quota(cgroup: Path = CGROUP, membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU time, in cores, that the cgroups of this process (``membership``, as
    /proc/self/cgroup) allow it under ``cgroup`` (v2 ``cpu.max``, or v1's ``cpu`` controller),
    the least of its cgroup and those above it; None where none sets a limit or none can be read."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2
            folders, reader = [cgroup], lambda d: _quota((d / "cpu.max").read_text())
        elif "cpu" in controllers.split(","):
            folders = [cgroup / name for name in ("cpu,cpuacct", "cpuacct,cpu", "cpu")]
            reader = lambda d: _quota((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text())
        else:
            continue
        parts = [p for p in path.strip().split("/") if p and p != ".."]
        for base in folders:
            # its own cgroup and those above it; a container sees its cgroup as the root
            for depth in range(len(parts), -1, -1):
                try:
                    found.append(reader(base.joinpath(*parts[:depth])))
                except OSError:
                    continue
    limits = [q for q in found if q is not None]
    return min(limits) if limits else None


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


def worker_count(workers: int | None) -> int:
    """A ``workers`` argument (evaluate_checkpoint, cv's score_fold) as a count: None is
    :func:`default_workers` (the commands' default); a negative number is refused, not taken as none."""
    if workers is None:
        return default_workers()
    if workers < 0:
        raise EdgesegError(f"workers must be >= 0 (0: metrics in the evaluating process) or None (the default), "
                           f"got {workers}")
    return workers


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT blocked in the calling thread for the block. Ctrl-C at a terminal reaches every
    process of its group, a worker still starting too, whose interpreter dies of it with a fatal
    error on the terminal before it can ignore it: a worker started here inherits the blocked
    signal. The mask is this thread's alone: in a process with other threads (torch's, ONNX
    Runtime's) the kernel may hand the signal to one of them, and Python's handler would then
    raise KeyboardInterrupt in the main thread at once, within the block: :class:`MetricWorkers`
    holds stops back around it too (``stops_held``). A Ctrl-C meanwhile reaches this process when
    the block ends."""
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


def _shared_case_metrics(compute, name: str, shape: tuple[int, ...], pred_dtype: str, truth_dtype: str,
                         *args: Any) -> Any:
    """``compute`` (:func:`case_metrics`, or another scoring of a case) of the prediction and truth
    in shared-memory block ``name``."""
    from multiprocessing import shared_memory

    # attached, not made here: the evaluating process unlinks it. A spawned worker shares its
    # resource tracker, which unlinks the blocks of an evaluating process killed with SIGKILL.
    shared = shared_memory.SharedMemory(name=name)
    pred = np.ndarray(shape, np.dtype(pred_dtype), buffer=shared.buf)
    truth = np.ndarray(shape, np.dtype(truth_dtype), buffer=shared.buf, offset=pred.nbytes)
    try:
        return compute(pred, truth, *args)
    finally:
        del pred, truth  # the mapping cannot close while an array uses it
        try:
            shared.close()
        except BufferError:  # an error's traceback still holds the arrays: the mapping goes with it
            shared = None


def _worker_ended(processes, lost: list[str], handing: str) -> EdgesegError:
    """The error of a pool a worker of which ended without a result: how it ended (its exit status
    or signal, from ``processes``), the cases lost with it (``lost``, in flight), else the one being
    handed over (``handing``)."""
    ends = set()
    for proc in processes:
        # the pool's thread reaps it too: its status comes from whichever thread reaps it first
        deadline = time.monotonic() + 5
        while proc.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.02)
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            ends.add(f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else ""))
        elif code:
            ends.add(f"exited with status {code} (its error is above; a script that starts metric workers "
                     f"needs `if __name__ == \"__main__\":`, docs/training.md)")
    # a broken pool terminates the workers left: their SIGTERM is how it stopped them, not news
    ends = (ends - {"killed by SIGTERM"}) or ends
    how = "; ".join(sorted(ends)) or "ended without a result (killed, or out of memory?)"
    what = (f"case{'s' if len(lost) > 1 else ''} {', '.join(lost)} lost with it" if lost
            else f"before case {handing} could be handed over")
    return EdgesegError(f"a metric worker process {how}: {what}; nothing was written")


class MetricWorkers:
    """``workers`` processes computing :func:`case_metrics` (or ``compute``, another module-level
    function of a case's prediction and truth: cv's per-slice scores), at most ``workers`` cases in
    flight.

    Use as a context manager: leaving it by an exception (an error, Ctrl-C, SIGTERM) terminates
    the workers; leaving it normally waits for them to exit."""

    def __init__(self, workers: int, shared_memory: bool = True, compute=case_metrics) -> None:
        """``shared_memory`` False hands every case through the pool's pipe (as where /dev/shm
        has no room for it)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if workers < 1:
            raise EdgesegError(f"metric workers must be >= 1, got {workers}")
        self.workers, self.compute = workers, compute
        self.shared_memory = shared_memory
        sweep_orphans()  # the blocks of evaluations killed with their process group
        self._started: set = set()  # every worker process started, those the pool has yet to record too
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(os.getpid(),))
        self._pending: dict = {}  # future -> (slot, case id, its shared memory or None)

    def __enter__(self) -> "MetricWorkers":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.close(terminate=kind is not None)

    def submit(self, slot: int, case_id: str, pred: np.ndarray, truth: np.ndarray,
               *args: Any) -> list[tuple[int, dict[str, Any]]]:
        """Hand ``compute(pred, truth, *args)`` of case ``slot`` to a worker, first waiting
        while ``workers`` cases are in flight; returns the (slot, result) of the cases finished
        meanwhile. The arrays go through shared memory where it has room
        (:func:`edgeseg.evaluate.shared_cases.shared`), else through the pool's pipe."""
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        done = self._collect(block=len(self._pending) >= self.workers)
        before = set(multiprocessing.active_children())
        # Ctrl-C and SIGTERM wait until the case is recorded (``stops_held``): the pool starts a
        # worker's interpreter, then writes it what to run, then records it; a stop landing in
        # between left a worker neither ``close`` nor the pool knew, which outlived the command
        # and printed a traceback (EOFError) on its terminal. Leaving the block, they stop the
        # command with every worker and the case's block in reach of ``close``.
        with stops_held():
            block = shared(pred, truth) if self.shared_memory else None
            try:
                with _interrupts_held():  # a submit may start a worker
                    if block is None:
                        future = self._pool.submit(self.compute, pred, truth, *args)
                    else:
                        future = self._pool.submit(_shared_case_metrics, self.compute, block.name, pred.shape,
                                                   pred.dtype.str, truth.dtype.str, *args)
            except BrokenProcessPool:  # a worker ended while idle, or as it started
                release(block)
                raise self._broken(case_id) from None
            except BaseException:
                release(block)
                raise
            finally:
                # the workers started for this case, those the pool has yet to record too
                self._started.update(set(multiprocessing.active_children()) - before)
            self._pending[future] = (slot, case_id, block)
        return done

    def _broken(self, handing: str) -> EdgesegError:
        lost = [case_id for _, case_id, _ in sorted(self._pending.values(), key=lambda item: item[0])]
        return _worker_ended(self._started, lost, handing)

    def finish(self) -> list[tuple[int, dict[str, Any]]]:
        """Wait for every case in flight; their (slot, result) in the order they finished."""
        done = []
        while self._pending:
            done += self._collect(block=True)
        return done

    def _collect(self, block: bool) -> list[tuple[int, dict[str, Any]]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        if not self._pending:
            return []
        finished, _ = wait(list(self._pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        # slot order: which of several finished first says nothing about the results
        finished = sorted(finished, key=lambda f: self._pending[f][0])
        try:
            done = [(slot, self._result(future, case_id)) for future in finished
                    for slot, case_id, _ in [self._pending[future]]]
        except BrokenProcessPool:
            raise self._broken("") from None
        finally:
            for future in finished:
                release(self._pending[future][2])
                del self._pending[future]  # once released: close() releases what is left
        return done

    @staticmethod
    def _result(future, case_id: str) -> dict[str, Any]:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except (EdgesegError, MemoryError, BrokenProcessPool):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise EdgesegError(f"computing the metrics of case {case_id} failed in a worker process: "
                               f"{type(exc).__name__}: {text}") from None

    def close(self, terminate: bool = False) -> None:
        """Stop the workers: at once with ``terminate`` (an error or a stop: cases in flight are
        dropped), else once they are idle; either way wait until they have exited."""
        if terminate:
            # no public way to the pool's processes before 3.14; those started but not yet recorded too
            recorded = list((getattr(self._pool, "_processes", None) or {}).values())
            for proc in {*recorded, *self._started}:
                if proc.is_alive():
                    proc.terminate()
        try:
            self._pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for _, _, block in self._pending.values():
                release(block)
            self._pending.clear()
            for proc in self._started:  # reaped: the pool leaves one it never recorded
                proc.join()
