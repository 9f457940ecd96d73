"""Processes that need ``auto``'s probe at the same time share it: server workers, Triton
instances or parallel jobs starting on one bundle with an empty cache measure once, and all run
the backend that measurement chose. A lock holder that dies does not hold the others up."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import signal
import time
from pathlib import Path

import pytest

from edgeseg.errors import BackendError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.probe_cache import cache_path, probe_lock

PROBED = re.compile(r"backend auto -> (\S+) \(probe at batch 1")
CACHED = re.compile(r"backend auto -> (\S+) \(cached probe\)")


def _load(bundle: str, log_path: str, start) -> None:
    """One process loading the bundle with ``auto``, its runtime log in ``log_path``."""
    logging.basicConfig(filename=log_path, level=logging.INFO, format="%(message)s")
    if start is not None:
        start.wait(120)  # every process imported and ready: the loads begin together
    with Segmenter.load(bundle, backend="auto", threads=1) as seg:
        logging.getLogger("test").info("chosen %s", seg.backend)


def _hold_probe_lock(held) -> None:
    from edgeseg.runtime.probe_cache import probe_lock

    with probe_lock() as shared:
        assert shared
        held.set()
        time.sleep(3600)


def _fork_while_holding(forked) -> None:
    from edgeseg.runtime.probe_cache import probe_lock

    with probe_lock():
        pid = os.fork()
        if pid == 0:  # the child outlives its parent's probe, and does nothing with the lock
            time.sleep(3600)
            os._exit(0)
    forked.value = pid


def test_processes_loading_one_bundle_at_once_probe_once_and_choose_alike(bundle_dir, tmp_path, monkeypatch):
    """Four processes start loading one bundle at the same moment on an empty cache: one
    measures, the three others wait for it and take its choice from the cache. (Each used to
    measure while the others loaded and ran their candidates on the same cores, so they could
    choose differently, and the last to finish decided what was cached.)"""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    logs = [tmp_path / f"load-{k}.log" for k in range(4)]
    workers = [ctx.Process(target=_load, args=(str(bundle_dir), str(log), start)) for log in logs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
        assert w.exitcode == 0
    texts = [log.read_text() for log in logs]
    probed = [m for text in texts for m in PROBED.findall(text)]
    cached = [m for text in texts for m in CACHED.findall(text)]
    chosen = [re.search(r"chosen (\S+)", text).group(1) for text in texts]
    assert len(probed) == 1 and len(cached) == 3, texts
    assert set(chosen) == set(cached) == set(probed)
    assert [entry["choice"] for entry in json.loads(cache_path().read_text()).values()] == probed


def test_a_probe_lock_holder_killed_does_not_hold_up_the_others(bundle_dir, tmp_path, monkeypatch):
    """A process killed (SIGKILL) while it holds the probe lock: the kernel drops its lock, and a
    load waiting for it goes on to measure. The holder here probes no bundle at all: a load waits
    for any probe on the machine, not only for one of its own bundle."""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_probe_lock, args=(held,))
    holder.start()
    try:
        assert held.wait(120)
        log = tmp_path / "load.log"
        loader = ctx.Process(target=_load, args=(str(bundle_dir), str(log), None))
        loader.start()
        deadline = time.monotonic() + 300  # a guard against a hang, not a measurement
        while "waiting for it" not in (log.read_text() if log.exists() else ""):
            assert loader.is_alive() and time.monotonic() < deadline, log.read_text() if log.exists() else ""
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGKILL)
        loader.join(600)
        assert loader.exitcode == 0
    finally:
        holder.kill()
        holder.join()
    text = log.read_text()
    assert len(PROBED.findall(text)) == 1 and PROBED.findall(text) == re.findall(r"chosen (\S+)", text)


def test_a_child_forked_during_a_probe_does_not_keep_the_lock(tmp_path, monkeypatch):
    """A process forks while it probes (a pool started from another thread) and the child lives
    on: once the parent's probe ends the lock is free, not held until that child exits."""
    import fcntl

    from edgeseg.runtime.probe_cache import PROBE_LOCK_NAME

    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    ctx = multiprocessing.get_context("spawn")
    forked = ctx.Value("i", 0)
    prober = ctx.Process(target=_fork_while_holding, args=(forked,))
    prober.start()
    deadline = time.monotonic() + 120  # not join(): the forked child keeps a copy of its sentinel pipe
    while prober.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert prober.exitcode == 0 and forked.value > 0
        os.kill(forked.value, 0)  # the forked child is alive
        with open(cache_path().with_name(PROBE_LOCK_NAME)) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while the child holds it
    finally:
        if forked.value > 0:
            os.kill(forked.value, signal.SIGKILL)


def _fixed_order_choice(bundle_dir, monkeypatch) -> str:
    """The backend of auto's fixed order here: what EDGESEG_BACKEND_PROBE=0 loads."""
    with monkeypatch.context() as m:
        m.setenv("EDGESEG_BACKEND_PROBE", "0")
        with Segmenter.load(bundle_dir, threads=1) as seg:
            return seg.backend


def test_auto_loads_where_the_cache_folder_cannot_be_written(bundle_dir, tmp_path, monkeypatch, caplog):
    """A cache folder that cannot be made (a path under a file, which no user can create): ``auto``
    loads the first backend of its fixed order without measuring (what it measured could not be
    kept, and the next start could pick another), with one warning and nothing written."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    with caplog.at_level(logging.INFO, logger="edgeseg"), Segmenter.load(bundle_dir, threads=1) as seg:
        assert seg.backend == _fixed_order_choice(bundle_dir, monkeypatch)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("edgeseg") and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "backend probe cache" in warnings[0], warnings
    assert "chooses without measuring" in warnings[0] and "--backend" in warnings[0]
    assert "probe at batch 1" not in caplog.text
    assert not cache_path().exists()



def test_a_probe_lock_holder_that_hangs_alive_holds_a_load_up_only_for_the_bound(bundle_dir, tmp_path, monkeypatch):
    """A process holds the probe lock and never lets go, alive (stopped, stuck in a driver): a
    load waits EDGESEG_PROBE_WAIT seconds, then takes auto's fixed order without measuring (nothing
    it chose could be recorded), says so in one warning and records nothing. It used to wait for
    as long as the holder lived."""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("EDGESEG_PROBE_WAIT", "1")
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    holder = ctx.Process(target=_hold_probe_lock, args=(held,))
    holder.start()
    try:
        assert held.wait(120)
        log = tmp_path / "load.log"
        loader = ctx.Process(target=_load, args=(str(bundle_dir), str(log), None))
        loader.start()
        loader.join(300)  # a guard against the old endless wait, not a measurement
        hung = loader.exitcode is None
        if hung:
            loader.kill()
            loader.join()
        assert not hung and loader.exitcode == 0, log.read_text() if log.exists() else ""
        assert holder.is_alive()  # it still holds the lock: the load did not wait it out
    finally:
        holder.kill()
        holder.join()
    text = log.read_text()
    assert "has held the backend probe lock" in text and "EDGESEG_PROBE_WAIT=1" in text, text
    assert "chooses without measuring" in text and not PROBED.findall(text)
    assert re.findall(r"chosen (\S+)", text) == [_fixed_order_choice(bundle_dir, monkeypatch)]
    assert not cache_path().exists()  # an unshared measurement is not recorded


def test_a_probe_wait_that_is_no_number_of_seconds_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    for value in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("EDGESEG_PROBE_WAIT", value)
        with pytest.raises(BackendError, match=f"EDGESEG_PROBE_WAIT must be a number of seconds from 0 up, got '{value}'"):
            with probe_lock():
                raise AssertionError("the probe lock was taken under an unreadable EDGESEG_PROBE_WAIT")
