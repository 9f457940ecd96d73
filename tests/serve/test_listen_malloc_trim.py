"""`edgeseg listen` gives back the free memory glibc keeps once a series is segmented.

glibc returns free memory to the system only from the top of a heap; the free pieces a segmented
series leaves between chunks still in use stay resident, and a soak of the node climbed by them
(docs/results.md, "Soak"). The oracle is the process itself: a SIGUSR1 handler installed before
the command starts reads VmRSS, calls ``malloc_trim(0)`` and reads VmRSS again; what that trim
gives back is the free memory that was still resident.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
SETTLE_S = 5  # the command looks for finished series once a second

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")

HELD_ON_SIGNAL = """
import ctypes, signal, sys
from pathlib import Path

libc = ctypes.CDLL(None)

def rss_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))

def held(signum, frame):
    before = rss_kib()
    libc.malloc_trim(0)
    Path(sys.argv[1]).write_text(f"{before} {rss_kib()}")

signal.signal(signal.SIGUSR1, held)
from edgeseg.cli.main import cli
cli(sys.argv[2:])
"""


def resident_free_kib(proc: subprocess.Popen, report: Path) -> int:
    """VmRSS that a malloc_trim(0) in ``proc`` gives back, in KiB."""
    report.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while not report.is_file() or not report.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, "the node did not report"
        time.sleep(0.1)
    before, after = map(int, report.read_text().split())
    return before - after


def test_release_free_memory_returns_a_heaps_free_pages():
    """A process that leaves 56 MiB free between chunks it keeps (below glibc's mmap threshold,
    so from the heap, where glibc's own trimming at the top cannot reach them)."""
    script = ("import sys\n"
              "from edgeseg.serve.malloc_arenas import release_free_memory\n"
              "def rss(): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:'))\n"
              "blocks = [bytearray(b'x' * 65536) for _ in range(1024)]\n"
              "kept = blocks[7::8]\n"
              "del blocks\n"
              "before = rss()\n"
              "print(release_free_memory(), before - rss())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    trimmed, returned = done.stdout.split()
    assert trimmed == "True", done.stderr
    assert int(returned) > 40 * 1024


def test_listen_gives_back_what_glibc_keeps_after_a_series(serve_bundle, free_port, wait_port, tmp_path):
    if shutil.which("storescu") is None:
        pytest.skip("storescu (dcmtk) is not installed")
    port, out, report = free_port(), tmp_path / "out", tmp_path / "held"
    proc = subprocess.Popen([sys.executable, "-c", HELD_ON_SIGNAL, str(report), "listen", str(serve_bundle),
                             "--port", str(port), "--out", str(out), "--idle", "0.5", "--backend", "onnxruntime:fp32",
                             "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True)
    try:
        wait_port(port, timeout=120)  # the port opens once the model is loaded
        files = [str(p) for p in sorted(SERIES.glob("*.dcm"))]
        for sent in range(1, 4):  # the series, then twice again: each time a SEG that replaces the last
            done = subprocess.run(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(port), *files],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            deadline = time.monotonic() + 120
            while len(list(out.rglob("*.dcm"))) < sent:
                assert proc.poll() is None and time.monotonic() < deadline, "no SEG was written"
                time.sleep(0.2)
        time.sleep(SETTLE_S)
        # without the trim after a series, 5-8 MiB of free memory stayed resident here
        assert resident_free_kib(proc, report) < 1024
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
