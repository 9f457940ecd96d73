"""`edgeseg train --nproc 2` when a process of the run fails or dies: the command ends with one
line naming what happened, and no process of the run is left training.

torchrun starts each training process in a session of its own and reports a failure with its own
traceback and table; the training processes each print their error. The command prints one line
for all of them instead, and stops what is left when torchrun, or the command itself, is killed.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeseg.train.launch import FAILURES_FILE, failure_text

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc")

TINY = ["--data", "phantom:cases=4,size=64,slices=16", "--size", "64", "--base", "4", "--depth", "2", "--workers", "0",
        "--quiet"]


def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}


def _processes() -> dict[int, tuple[int, str]]:
    """Every process: its parent and command line."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_text().replace("\0", " ")
        except (OSError, ValueError, IndexError):
            continue
        found[int(stat.parent.name)] = (ppid, cmdline)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@contextlib.contextmanager
def _running(tmp_path: Path):
    """A two-process training of far more epochs than it will run, yielded once an epoch is
    written, with its processes: ``launcher`` (the command), ``torchrun``, ``rank0``, ``rank1``.
    Whatever is still running at the end is killed."""
    out, err = tmp_path / "run", open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "train", "--nproc", "2", "--epochs", "100000",
                             "--out", str(out), *TINY], stdout=subprocess.DEVNULL, stderr=err, env=_env(tmp_path))
    pids = {"launcher": proc.pid}
    try:
        _wait_for(lambda: (out / "last.pt").is_file() or proc.poll() is not None, 120, "no epoch finished")
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
        for pid, (ppid, cmdline) in _processes().items():
            if ppid == proc.pid and "edgeseg.train.launch" in cmdline:
                pids["torchrun"] = pid
        ranks = {pid: cmdline for pid, (ppid, cmdline) in _processes().items() if ppid == pids["torchrun"]}
        for pid in ranks:
            rank = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)["RANK"]
            pids[f"rank{rank}"] = pid
        assert {"rank0", "rank1"} <= set(pids), pids
        yield proc, pids, out
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        err.close()


def _one_line_error(proc, tmp_path: Path, fragment: str) -> None:
    proc.wait(timeout=90)
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:") and fragment in lines[0], stderr


def test_every_process_failing_alike_is_one_line(tmp_path, assert_one_line_error):
    """A learning rate far too high diverges in both processes at once; each printed the same
    line, and torchrun its traceback and table of failed processes after them."""
    done = subprocess.run([sys.executable, "-m", "edgeseg", "train", "--nproc", "2", "--epochs", "3", "--lr", "1e8",
                           "--out", str(tmp_path / "run"), *TINY],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "training diverged in epoch")


# A sitecustomize for the training process of rank 1 alone (torchrun sets RANK for its processes,
# not for itself or the command): files it writes may hold 1 kB, so its first validation
# prediction (16 slices of 64 x 64) fails as on a full disk. Python ignores SIGXFSZ; the write
# raises EFBIG.
_RANK1_SMALL_FILES = """
import os, resource
if os.environ.get("RANK") == "1":
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
"""


def test_a_process_failing_in_validation_ends_the_run_in_one_line(tmp_path, assert_one_line_error):
    """Rank 1 validates its share of the cases too: its failure there (a full disk) is the
    run's one line, rank 0 waiting for its results is stopped, and no epoch is saved."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_RANK1_SMALL_FILES)
    env = {**_env(tmp_path), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "PYTHONDONTWRITEBYTECODE": "1"}
    # 4 cases split 1 / 2 / 1: two validation cases, one for each process
    done = subprocess.run([sys.executable, "-m", "edgeseg", "train", "--nproc", "2", "--epochs", "2",
                           "--val-fraction", "0.5", "--out", str(tmp_path / "run"), *TINY],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "the disk may be full")
    assert "edgeseg-validation-" in done.stderr and done.stderr.rstrip().endswith("1.npy"), done.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not list(tmp_path.glob("edgeseg-validation-*")), "rank 1's predictions folder is left"


def test_a_killed_training_process_ends_the_run_in_one_line(tmp_path):
    """A process killed (by the out-of-memory killer, say): the other one, whose gradient
    all-reduce fails, is stopped by torchrun, and the command names the killed one."""
    with _running(tmp_path) as (proc, pids, out):
        os.kill(pids["rank1"], signal.SIGKILL)
        _one_line_error(proc, tmp_path, "training process rank 1 of 2 was killed by SIGKILL")
        _wait_for(lambda: not any(_alive(p) for p in pids.values()), 30, "a process of the run is left")
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=False)["epoch"] >= 1


def test_a_killed_torchrun_leaves_no_training_process_running(tmp_path):
    """torchrun starts its processes in sessions of their own: killed, it left them training."""
    with _running(tmp_path) as (proc, pids, out):
        os.kill(pids["torchrun"], signal.SIGKILL)
        _one_line_error(proc, tmp_path, "torchrun, which ran the 2 training processes, was killed by SIGKILL")
        assert not _alive(pids["rank0"]) and not _alive(pids["rank1"])
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=False)["epoch"] >= 1


def test_a_killed_command_stops_torchrun_and_its_processes(tmp_path):
    """`kill -9` of the command: torchrun takes it as a SIGTERM and stops its processes, which
    would otherwise train on, unseen, into the run folder."""
    with _running(tmp_path) as (proc, pids, out):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not any(_alive(p) for p in pids.values()), 60, "torchrun or a training process is left")
    assert torch.load(out / "last.pt", map_location="cpu", weights_only=False)["epoch"] >= 1


def _reports(tmp_path: Path, failures: dict, lines: dict) -> Path:
    tmp_path.mkdir()
    (tmp_path / FAILURES_FILE).write_text(json.dumps(failures))
    for rank, text in lines.items():
        (tmp_path / f"rank-{rank}.txt").write_text(text)
    return tmp_path


def test_the_failure_line_names_the_process_that_failed_first(tmp_path):
    # rank 0 was stopped by torchrun (143) after rank 1 failed: rank 1's line, once
    failures = {"0": {"exitcode": 143, "timestamp": 5}, "1": {"exitcode": 2, "timestamp": 6}}
    assert failure_text(_reports(tmp_path / "a", failures, {1: "disk full: /x"}), 2, 1) == "disk full: /x"
    # two different lines: the first's, saying which process gave it
    failures = {"0": {"exitcode": 2, "timestamp": 7}, "1": {"exitcode": 2, "timestamp": 6}}
    text = failure_text(_reports(tmp_path / "b", failures, {0: "one", 1: "two"}), 2, 1)
    assert text == "rank 1: two"
    # a process that printed nothing: how it ended, and where the run stands
    failures = {"0": {"exitcode": -15, "timestamp": 6}, "1": {"exitcode": 1, "timestamp": 6}}
    text = failure_text(_reports(tmp_path / "c", failures, {}), 2, 1, out="runs/a")
    assert text.startswith("training process rank 1 of 2 failed with exit status 1; its messages are above")
    assert "runs/a/last.pt holds the last finished epoch" in text
