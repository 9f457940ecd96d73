"""`edgeseg listen` keeps at most two glibc malloc arenas however many associations run at once.

Every association runs in a thread of its own, and glibc gave each new thread an arena of its
own: a soak of the node grew its resident memory by about 3.6 MiB per 1,000 associations, with no
live object more (docs/results.md, "Soak"). The arenas are counted from /proc/PID/maps: glibc maps
each arena other than the main one as one 64 MiB-aligned reservation of 64 MiB (HEAP_MAX_SIZE on a
64-bit build), read-write where used and inaccessible after; the main arena is the [heap].
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeseg.serve.malloc_arenas import NODE_ARENAS
from tests.serve.dcmtk_path import missing_dcmtk

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
HEAP_MAX = 64 << 20

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or sys.maxsize < 2**32,
                                reason="glibc's malloc arenas on a 64-bit build")


def thread_arenas(pid: int) -> int:
    """The malloc arenas of ``pid`` besides the main one: 64 MiB-aligned anonymous reservations
    of exactly 64 MiB, a read-write part and an inaccessible rest."""
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        maps.append((start, end, fields[1], fields[5] if len(fields) > 5 else ""))
    count = 0
    for i, (start, end, perms, name) in enumerate(maps):
        if start % HEAP_MAX or not perms.startswith("rw") or name:
            continue
        if i + 1 < len(maps) and maps[i + 1][0] == end and maps[i + 1][2].startswith("---") and not maps[i + 1][3]:
            end = maps[i + 1][1]
        count += end - start == HEAP_MAX
    return count


def test_the_counter_sees_the_arenas_of_threads(tmp_path):
    """The oracle above against a process that made them: four threads alive at once, each
    allocating, under glibc's own default (no cap), have arenas of their own."""
    script = ("import threading, sys\n"
              "ready, done = threading.Barrier(5), threading.Event()\n"
              "def work():\n"
              "    held = bytearray(100000); ready.wait(); done.wait()\n"  # malloc's, under its mmap threshold
              "threads = [threading.Thread(target=work) for _ in range(4)]\n"
              "[t.start() for t in threads]; ready.wait(); print('ready', flush=True); sys.stdin.readline()\n"
              "done.set(); [t.join() for t in threads]\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert thread_arenas(proc.pid) >= 4
    finally:
        proc.communicate("\n", timeout=60)


@pytest.mark.parametrize("setting, capped", [(None, "True"), ("4", "False")])
def test_the_cap_leaves_an_operators_setting_alone(setting, capped):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if setting is not None:
        env["MALLOC_ARENA_MAX"] = setting
    done = subprocess.run([sys.executable, "-c", "from edgeseg.serve.malloc_arenas import cap_malloc_arenas; "
                           "print(cap_malloc_arenas())"], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == capped, done.stderr


def test_listen_keeps_two_arenas_under_concurrent_associations(serve_bundle, free_port, wait_port, tmp_path):
    if missing_dcmtk("storescu", "echoscu"):
        pytest.skip(missing_dcmtk("storescu", "echoscu"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--port", str(port),
                             "--out", str(tmp_path / "out"), "--idle", "1", "--backend", "onnxruntime:fp32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**env, "OMP_NUM_THREADS": "1"},
                            text=True)
    try:
        wait_port(port, timeout=120)  # the port opens once the model is loaded
        deadline = time.monotonic() + 120
        files = [str(p) for p in sorted(SERIES.glob("*.dcm"))]
        senders = [subprocess.Popen(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(port), *files],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(6)]
        for sender in senders:
            assert sender.wait(timeout=120) == 0, sender.stderr.read()
        while not list((tmp_path / "out").rglob("*.dcm")):  # the series was segmented too
            assert proc.poll() is None and time.monotonic() < deadline, "no SEG was written"
            time.sleep(0.2)
        assert thread_arenas(proc.pid) <= NODE_ARENAS - 1  # the main arena is the other
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
