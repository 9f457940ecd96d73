"""What ``edgeseg evaluate --workers N`` leaves behind when it fails or is killed: no shared-memory
block (after the next evaluation starts, for one killed with its whole process group), no worker;
its error says how a worker ended; the cores it counts follow the cgroup's CPU quota."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from .test_eval_workers import LONG_DATA, _evaluate, _in_session, _metric_workers

NAMES = ["background", "liver"]


def _case(size: int = 16) -> tuple:
    truth = np.zeros((4, size, size), np.uint8)
    truth[1:3, 4:9, 4:9] = 1
    return np.roll(truth, 1, axis=2), truth, NAMES, True, np.eye(3)


def _ours(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"edgeseg-eval-{pid}-")]


def _shm_held(pid: int) -> list[str]:
    """The /dev/shm files process ``pid`` has open, whatever their names (Linux /proc)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/dev/shm/") and not target.startswith("/dev/shm/sem."):
            held.append(target)
    return held


def test_an_evaluation_killed_with_its_process_group_leaves_no_block_once_the_next_starts(trained_checkpoint,
                                                                                          tmp_path):
    """SIGKILL to the whole group (timeout -s KILL, a cgroup's OOM killer) kills multiprocessing's
    resource tracker too: the blocks of the cases in flight stay in /dev/shm until the next
    evaluation with workers removes them."""
    from edgeseg.evaluate.case_metrics import MetricWorkers

    proc = _evaluate(trained_checkpoint, tmp_path / "out", "--workers", "2", data=LONG_DATA, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        held = []
        while not held:
            assert proc.poll() is None and time.monotonic() < deadline, "no case went through shared memory"
            held = _shm_held(proc.pid)
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while _in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _in_session(proc.pid) == []
    assert [path for path in held if os.path.exists(path)], "the kill left nothing to remove"
    with MetricWorkers(1):  # starting metric workers sweeps the blocks of evaluations killed outright
        assert [path for path in held if os.path.exists(path)] == []


def test_the_sweep_removes_only_unlocked_blocks_of_dead_evaluations(tmp_path):
    """Real files in a folder standing for /dev/shm: a block of a PID no longer running goes; one
    whose lock is held (its creator alive in another PID namespace), one of a running PID, and
    files not named as ours stay."""
    from edgeseg.evaluate.shared_cases import sweep_orphans

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    for name in (f"edgeseg-eval-{dead}-0", f"edgeseg-eval-{dead}-1", f"edgeseg-eval-{os.getppid()}-0",
                 f"edgeseg-eval-{dead}-x", "psm_0123abcd", "sem.mp-abcdefgh"):
        (tmp_path / name).write_bytes(b"\0" * 64)
    with open(tmp_path / f"edgeseg-eval-{dead}-1", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        assert sweep_orphans(tmp_path) == [f"edgeseg-eval-{dead}-0"]
    assert sweep_orphans(tmp_path) == [f"edgeseg-eval-{dead}-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"edgeseg-eval-{os.getppid()}-0", f"edgeseg-eval-{dead}-x", "psm_0123abcd", "sem.mp-abcdefgh"])


class _Interrupted(np.ndarray):
    """An array whose copy into a block is interrupted (Ctrl-C or SIGTERM during the copy)."""

    def reshape(self, *shape, **options):
        raise KeyboardInterrupt


def test_an_interrupted_copy_into_a_block_unlinks_it():
    from edgeseg.evaluate.shared_cases import shared

    pred, truth, *_ = _case()
    with pytest.raises(KeyboardInterrupt):
        shared(pred.view(_Interrupted), truth)
    assert _ours(os.getpid()) == []


def test_the_pipe_hands_over_the_cases_where_shared_memory_is_not_used():
    """``shared_memory=False`` (as where /dev/shm has no room): the same metrics, no block made."""
    from edgeseg.evaluate.case_metrics import MetricWorkers, case_metrics

    cases = [_case(size) for size in (16, 20, 24)]
    with MetricWorkers(2, shared_memory=False) as pool:
        finished = []
        for slot, args in enumerate(cases):
            finished += pool.submit(slot, f"case_{slot}", *args)
            assert _ours(os.getpid()) == []
        finished += pool.finish()
    assert sorted(slot for slot, _ in finished) == [0, 1, 2]
    for slot, part in finished:
        assert part == case_metrics(*cases[slot])


def test_a_stop_between_a_workers_start_and_its_record_leaves_no_worker(monkeypatch):
    """Ctrl-C delivered to another thread (torch's, ONNX Runtime's) is raised in the main thread
    whatever its mask: here just after a worker started, before the pool recorded it."""
    from multiprocessing.context import SpawnProcess

    from edgeseg.evaluate.case_metrics import MetricWorkers

    start = SpawnProcess.start

    def start_then_stop(self):
        start(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(SpawnProcess, "start", start_then_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            with MetricWorkers(1) as pool:
                pool.submit(0, "case_0", *_case())
        monkeypatch.undo()
        left = [p for p in multiprocessing.active_children() if p.is_alive()]
        assert left == [] and _metric_workers(os.getpid()) == []
        assert _ours(os.getpid()) == []
    finally:
        for proc in multiprocessing.active_children():
            proc.kill()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_script_without_a_main_guard_is_told_so(tmp_path, workers):
    """A spawned worker imports the script that started it: without ``if __name__ == "__main__":``
    it fails to start (a RuntimeError, exit status 1), not killed: the error says so, and names
    the case that was lost. With two workers the pool stops the other with SIGTERM once the first
    has failed: that is its doing, not how the worker ended, and the line does not say it. As they
    import the script, the first worker fails only once the second has started, and the second
    waits: it is running when the pool stops it (else both might fail first, and no SIGTERM be sent)."""
    script = tmp_path / "score.py"
    script.write_text(textwrap.dedent(f"""
        import os, time
        if __name__ == "__mp_main__":  # a worker importing the script
            try:
                os.close(os.open({str(tmp_path / "first")!r}, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                open({str(tmp_path / "second")!r}, "w").close()
                time.sleep(120)
            deadline = time.monotonic() + (60 if {workers} > 1 else 0)
            while time.monotonic() < deadline and not os.path.exists({str(tmp_path / "second")!r}):
                time.sleep(0.05)
        import numpy as np
        from edgeseg.evaluate.case_metrics import MetricWorkers
        truth = np.zeros((4, 16, 16), np.uint8)
        truth[1:3, 4:9, 4:9] = 1
        with MetricWorkers({workers}) as pool:
            for slot, name in enumerate(["case_a", "case_b"][:{workers}]):
                pool.submit(slot, name, truth, truth, ["background", "liver"], True, np.eye(3))
            pool.finish()
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "a metric worker process exited with status 1" in last, done.stderr
    assert 'if __name__ == "__main__":' in last and ("case case_a lost" if workers == 1 else "case_a") in last
    assert "SIGTERM" not in last, last
    assert (tmp_path / "second").exists() == (workers == 2)  # the case the line is about was made


def _cgroup(root: Path, files: dict[str, str], membership: str) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "self-cgroup").write_text(membership)
    return root / "self-cgroup"


@pytest.mark.parametrize("files, membership, quota", [
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),
    ({"cpu.max": "max 100000\n", "a/b/cpu.max": "150000 100000\n"}, "0::/a/b\n", 1.5),
    ({"cpu.max": "max 100000\n", "a/cpu.max": "100000 100000\n", "a/b/cpu.max": "300000 100000\n"}, "0::/a/b\n", 1.0),
    # a container sees its own cgroup as the mount's root, its path that of the host
    ({"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", 2.0),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", None),
])
def test_the_cgroup_cpu_quota_is_read_from_v1_and_v2_files(tmp_path, files, membership, quota):
    from edgeseg.evaluate.case_metrics import cgroup_cpu_quota

    assert cgroup_cpu_quota(tmp_path, _cgroup(tmp_path, files, membership)) == quota


def test_the_default_workers_count_the_cores_the_quota_allows(tmp_path):
    """``docker --cpus=2`` on a 16-core host: 2 cores, so no worker (one per 4 cores)."""
    from edgeseg.evaluate.case_metrics import default_workers, effective_cores

    cores = len(os.sched_getaffinity(0))
    limited = _cgroup(tmp_path, {"cpu.max": "200000 100000\n"}, "0::/\n")
    assert effective_cores(tmp_path, limited) == min(cores, 2)
    assert default_workers(tmp_path, limited) == 0
    free = _cgroup(tmp_path / "free", {"cpu.max": "max 100000\n"}, "0::/\n")
    assert effective_cores(tmp_path / "free", free) == cores
    assert default_workers(tmp_path / "free", free) == min(4, cores // 4)


@pytest.mark.parametrize("workers", ["-1", "-3"])
def test_a_negative_workers_is_refused_not_taken_as_the_default(tmp_path, workers):
    """--workers is a count: a negative one is a one-line usage error, not the default in disguise
    (-1 was the option's hidden default, shown in --help as the range x>=-1)."""
    from edgeseg.cli.main import cli
    from tests.guarded_cli import GuardedCliRunner

    out = tmp_path / "out"
    result = GuardedCliRunner().invoke(cli, ["evaluate", str(tmp_path / "best.pt"), "--data", "phantom:cases=2,size=32",
                                             "--workers", workers, "--out", str(out)])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "--workers" in result.output and workers in result.output and not out.exists()
    shown = GuardedCliRunner().invoke(cli, ["evaluate", "--help"]).output
    assert "x>=-1" not in shown and "x>=0" in shown


def test_a_quota_is_bounded_by_the_cores_and_by_one_core(tmp_path):
    """A quota over the cores this process may run on leaves those cores; one under a core is
    one core (never 0); a period of 0 sets no limit (no division by it)."""
    from edgeseg.evaluate.case_metrics import cgroup_cpu_quota, default_workers, effective_cores

    cores = len(os.sched_getaffinity(0))
    wide = _cgroup(tmp_path / "wide", {"cpu.max": f"{(cores + 16) * 100000} 100000\n"}, "0::/\n")
    assert effective_cores(tmp_path / "wide", wide) == cores
    assert default_workers(tmp_path / "wide", wide) == min(4, cores // 4)
    narrow = _cgroup(tmp_path / "narrow", {"cpu.max": "50000 100000\n"}, "0::/\n")
    assert cgroup_cpu_quota(tmp_path / "narrow", narrow) == 0.5 and effective_cores(tmp_path / "narrow", narrow) == 1
    broken = _cgroup(tmp_path / "broken", {"cpu.max": "100000 0\n"}, "0::/\n")
    assert cgroup_cpu_quota(tmp_path / "broken", broken) is None
