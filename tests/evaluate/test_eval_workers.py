"""``edgeseg evaluate --workers N``: the cases' metrics computed in worker processes beside the
inference give the report of one process, and a failing, killed or stopped evaluation leaves no
report and no worker behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import blocker, check_one_line_error

# Several cases, so that cases are in flight in several workers at once; large enough that the
# model finds the liver (HD95 then needs its distance transforms) and that a run lasts seconds.
DATA = "phantom:cases=5,size=96,slices=24,seed=3"
LONG_DATA = "phantom:cases=40,size=128,slices=32,seed=4"


def _arguments(checkpoint: Path, out: Path, *options: str, data: str = DATA) -> list[str]:
    return ["-m", "edgeseg", "evaluate", str(checkpoint), "--data", data, "--split", "all", "--out", str(out),
            "--quiet", *options]


def _evaluate(checkpoint: Path, out: Path, *options: str, data: str = DATA, env: dict | None = None,
              boot: list[str] = (), **popen) -> subprocess.Popen:
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen([sys.executable, *boot, *_arguments(checkpoint, out, *options, data=data)], text=True,
                            cwd=out.parent, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), **popen)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _in_session(sid: int) -> list[int]:
    """The live processes of session ``sid`` (Linux /proc; zombies left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def _metric_workers(pid: int) -> list[int]:
    """The spawned worker interpreters among ``pid``'s children (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def _blocks(pid: int) -> list[str]:
    """The shared-memory blocks of evaluating process ``pid`` still in /dev/shm."""
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"edgeseg-eval-{pid}-")]


def _wait_for_workers(proc: subprocess.Popen, count: int = 1) -> list[int]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"evaluate ended before its workers were seen: {proc.communicate()}"
        workers = _metric_workers(proc.pid)
        if len(workers) >= count:
            return workers
        time.sleep(0.05)
    raise AssertionError("no metric worker started in 300 s")


@pytest.fixture(scope="module")
def single_process_report(trained_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "workers-0"
    proc = _evaluate(trained_checkpoint, out, "--workers", "0")
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_write_the_report_one_process_writes(trained_checkpoint, single_process_report, tmp_path, workers):
    out = tmp_path / f"workers-{workers}"
    proc = _evaluate(trained_checkpoint, out, "--workers", str(workers))
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    one = json.loads((single_process_report / "eval.json").read_text())
    many = json.loads((out / "eval.json").read_text())
    # the scored cases are worth the check: the model finds the liver, so HD95 is computed
    assert [c["case_id"] for c in many["cases"]] == [f"case_{k:03d}" for k in range(5)]
    assert sum(isinstance(c["metrics"]["liver"]["hd95"], float) for c in one["cases"]) >= 3
    # only when and how it ran may differ
    for report in (one, many):
        for key in ("at", "command", "cwd"):
            report["environment"].pop(key)
    assert many == one
    for name in ("eval.txt", "worst_cases.png"):
        assert (out / name).read_bytes() == (single_process_report / name).read_bytes(), name


def test_an_error_in_a_worker_is_one_line_and_writes_no_report(trained_checkpoint, tmp_path):
    """HD95 needs scipy; where it cannot be imported the worker's error is the command's, with
    nothing written (the error raised in the worker process, carried back)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(blocker(("scipy",)))
    out = tmp_path / "out"
    proc = _evaluate(trained_checkpoint, out, "--workers", "2",
                     env={"PYTHONPATH": os.pathsep.join([str(site), *sys.path])})
    stdout, stderr = proc.communicate()
    check_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "scipy")
    assert not out.exists() or not list(out.iterdir())
    assert _blocks(proc.pid) == []


def test_a_killed_worker_is_one_line_and_writes_no_report(trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = _evaluate(trained_checkpoint, out, "--workers", "2", data=LONG_DATA)
    try:
        [victim, *_] = _wait_for_workers(proc)
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    check_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr),
                         "a metric worker process killed by SIGKILL (out of memory?): ")
    assert not out.exists() or not list(out.iterdir())
    assert _blocks(proc.pid) == []


@pytest.mark.parametrize("stop, status", [("interrupt", 130), ("terminate", 143)])
def test_a_stopped_evaluation_leaves_no_worker_running(trained_checkpoint, tmp_path, stop, status):
    """Ctrl-C (SIGINT to the terminal's whole process group, a worker still starting included)
    or SIGTERM (to the command alone) ends the command and its workers; no process of its session
    outlives it."""
    out = tmp_path / "out"
    # A non-interactive shell may start a test run with SIGINT ignored, and an ignored signal stays
    # ignored across exec: the command gets it back as at an interactive shell.
    boot = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    proc = _evaluate(trained_checkpoint, out, "--workers", "2", data=LONG_DATA, boot=["-c", boot],
                     start_new_session=True)
    try:
        # Ctrl-C as soon as a worker is seen, while its interpreter starts: it must not die of it
        # there (a fatal error on the terminal), and the command's one line must be all
        workers = _wait_for_workers(proc, count=1 if stop == "interrupt" else 2)
        blocked = [int(line.split()[1], 16) for line in Path(f"/proc/{workers[0]}/status").read_text().splitlines()
                   if line.startswith("SigBlk:")]
        if stop == "interrupt":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert blocked[0] & (1 << (signal.SIGINT - 1)), "a worker starts with SIGINT deliverable"
    assert proc.returncode == status, stderr
    assert stderr.strip().splitlines() == ["edgeseg: interrupted" if stop == "interrupt" else "edgeseg: stopped (SIGTERM)"]
    assert not [pid for pid in workers if pid in _in_session(proc.pid)]  # ended before the command
    # multiprocessing's resource tracker ends once it reads the end of its pipe, just after the command
    deadline = time.monotonic() + 30
    while _in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _in_session(proc.pid) == []
    assert not out.exists() or not list(out.iterdir())
    assert _blocks(proc.pid) == []


# A SIGTERM to the evaluating process itself, raised at the worst moment of a worker's start: once
# the worker's interpreter runs, before the pool has written it what to run and recorded it.
SIGTERM_AS_A_WORKER_STARTS = """
import signal
import multiprocessing.util as util

_spawn = util.spawnv_passfds

def spawnv_passfds(path, args, passfds):
    pid = _spawn(path, args, passfds)
    if any("spawn_main" in str(arg) for arg in args):  # a worker, not the resource tracker
        signal.raise_signal(signal.SIGTERM)
    return pid

util.spawnv_passfds = spawnv_passfds
"""


# A SIGTERM raised once, as the evaluating process has removed a scored case's block from
# /dev/shm and not yet told multiprocessing's resource tracker.
SIGTERM_AS_A_BLOCK_IS_RELEASED = """
import signal
from multiprocessing import resource_tracker

_unregister = resource_tracker.unregister
_fired = []

def unregister(name, rtype):
    if rtype == "shared_memory" and not _fired:
        _fired.append(name)
        signal.raise_signal(signal.SIGTERM)
    _unregister(name, rtype)

resource_tracker.unregister = unregister
"""


@pytest.mark.parametrize("moment", ["worker start", "block release"])
def test_a_sigterm_at_a_delicate_moment_stops_with_one_line_and_nothing_left(trained_checkpoint, tmp_path, moment):
    """A stop landing while the pool starts a worker, or while a case's block is removed, waits
    for the step to end: the command ends with its one line and 143, and nothing outlives it.
    (Left unknown, the worker outlived the command and printed EOFError's traceback once its end
    closed the pipe; a block removed but still tracked made the resource tracker warn of leaks.)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SIGTERM_AS_A_WORKER_STARTS if moment == "worker start"
                                           else SIGTERM_AS_A_BLOCK_IS_RELEASED)
    out = tmp_path / "out"
    proc = _evaluate(trained_checkpoint, out, "--workers", "2", start_new_session=True,
                     env={"PYTHONPATH": os.pathsep.join([str(site), *sys.path])})
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == ["edgeseg: stopped (SIGTERM)"]
    deadline = time.monotonic() + 30  # the resource tracker ends once it reads the end of its pipe
    while _in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _in_session(proc.pid) == []
    assert not out.exists() or not list(out.iterdir())
    assert _blocks(proc.pid) == []


def test_a_case_is_handed_over_only_while_fewer_than_workers_cases_are_in_flight():
    """With both workers stopped (SIGSTOP) while they hold 2 cases, handing over a third waits,
    so the evaluating process never holds more than ``workers`` cases' arrays in flight; once
    they go on (SIGCONT) every case's metrics come back, equal to those computed here."""
    import threading

    import numpy as np

    from edgeseg.data import open_dataset
    from edgeseg.evaluate.case_metrics import MetricWorkers, case_metrics

    names = ["background", "liver", "tumour"]
    cases = []
    for vol in open_dataset("phantom:cases=3,size=64,slices=12,seed=2"):
        truth = np.minimum(vol.label, 2).astype(np.uint8)
        cases.append((vol.case_id, (np.roll(truth, 2, axis=2), truth, names, True, vol.axes_mm)))
    finished = []
    with MetricWorkers(2) as pool:
        for slot, (case_id, args) in enumerate(cases[:2]):
            finished += pool.submit(slot, case_id, *args)
        workers = []
        deadline = time.monotonic() + 300
        while len(workers) < 2:
            assert time.monotonic() < deadline, "2 metric workers did not start in 300 s"
            workers = _metric_workers(os.getpid())
            time.sleep(0.05)
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        third = threading.Thread(target=lambda: finished.extend(pool.submit(2, cases[2][0], *cases[2][1])))
        third.start()
        third.join(5)
        still_waiting = third.is_alive()
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        third.join(300)
        assert not third.is_alive(), "the third case was not handed over in 300 s once the workers went on"
        finished += pool.finish()
    assert still_waiting, "a third case was handed over while 2 workers held 2 cases"
    assert sorted(slot for slot, _ in finished) == [0, 1, 2]
    for slot, part in finished:
        assert json.dumps(part) == json.dumps(case_metrics(*cases[slot][1]))


def test_workers_end_themselves_when_the_evaluation_is_killed(trained_checkpoint, tmp_path):
    """SIGKILL gives the command no chance to stop its workers: they see it gone and end."""
    out = tmp_path / "out"
    # no pipes: a worker left running would hold them open, and reading them would wait for it
    proc = _evaluate(trained_checkpoint, out, "--workers", "2", data=LONG_DATA, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = _wait_for_workers(proc, count=2)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while [pid for pid in workers if pid in _in_session(proc.pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in workers if pid in _in_session(proc.pid)] == []


def test_a_case_whose_metrics_raise_in_a_worker_raises_its_error_and_stops_the_workers():
    """A case with a degenerate grid (every axis 0 mm) fails in the worker as it fails here: the
    same DataError, raised by ``finish``; leaving the pool then ends its workers."""
    import numpy as np

    from edgeseg.errors import DataError
    from edgeseg.evaluate.case_metrics import MetricWorkers, case_metrics

    truth = np.zeros((4, 16, 16), np.uint8)
    truth[1:3, 4:9, 4:9] = 1
    pred = np.roll(truth, 1, axis=2)
    with pytest.raises(DataError) as here:
        case_metrics(pred, truth, ["background", "liver"], True, np.zeros((3, 3)))
    with pytest.raises(DataError) as there:
        with MetricWorkers(2) as pool:
            pool.submit(0, "good", pred, truth, ["background", "liver"], True, np.eye(3))
            pool.submit(1, "flat", pred, truth, ["background", "liver"], True, np.zeros((3, 3)))
            workers = _metric_workers(os.getpid())
            pool.finish()
    assert str(there.value) == str(here.value)
    assert workers and not [pid for pid in workers if pid in _children(os.getpid())]
