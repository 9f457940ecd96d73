"""`edgeseg bench`'s cold start reports the fresh process's own peak RSS, not the bench process's."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bench.runtime import _COLD_START, cold_start

BALLAST_MB = 300


def peak_from_outside_mb(bundle, backend: str, size: int) -> float:
    """The cold-start process's peak measured by the kernel's child accounting: RUSAGE_CHILDREN of
    a fresh interpreter that runs the same script. That interpreter is small, so the mark its
    child starts with after exec is its own few MB, not this test process's."""
    code = ("import resource, subprocess, sys; "
            "subprocess.run([sys.executable, '-c', *sys.argv[1:]], check=True, capture_output=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", code, _COLD_START, str(bundle), backend, "1", str(size), "none"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_a_parent_holding_a_large_allocation_does_not_change_the_cold_start_peak(bundle_dir):
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc/self/status: the cold start reports ru_maxrss here")
    ballast = np.ones(BALLAST_MB * 2**20 // 8)
    ballast[:] = 2.0  # resident, not just reserved
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > BALLAST_MB
    measured = cold_start(bundle_dir, "onnxruntime:fp32", size=64, threads=1)
    outside = peak_from_outside_mb(bundle_dir, "onnxruntime:fp32", 64)
    del ballast
    # An interpreter with numpy and ONNX Runtime and a 64 x 64 model: far below the ballast alone.
    assert outside < BALLAST_MB and measured["peak_rss_mb"] < BALLAST_MB, (measured, outside)
    assert abs(measured["peak_rss_mb"] - outside) < max(20.0, 0.15 * outside), (measured, outside)
    assert measured["peak_rss_source"] == "VmHWM"


EXIT_SECONDS = 3.0


def test_the_cold_start_ends_at_the_first_result_not_at_the_process_exit(bundle_dir, tmp_path, monkeypatch):
    """A child that takes EXIT_SECONDS to shut down after its first slice (torch and runtime
    thread pools unloading can take a good part of a second): that time is no part of the start.
    The oracle is the wall clock around the whole call, which does include it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(f"import atexit, time\natexit.register(time.sleep, {EXIT_SECONDS})\n")
    monkeypatch.setenv("PYTHONPATH", f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    before = time.perf_counter()
    measured = cold_start(bundle_dir, "onnxruntime:fp32", size=64, threads=1)
    whole = time.perf_counter() - before
    assert "error" not in measured, measured
    assert whole > EXIT_SECONDS  # the slow exit did happen, inside the call
    # the reported start leaves the exit out (a margin of a second for this process to be scheduled)
    assert measured["seconds"] < whole - (EXIT_SECONDS - 1.0), (measured, whole)
    assert measured["peak_rss_source"] == "VmHWM" or not Path("/proc/self/status").is_file()
