"""Peak memory of ``edgeseg listen`` while several peers send it large uncompressed Enhanced CT
files at once (docs/results.md, "Enhanced CT from concurrent senders").

Writes SENDERS Enhanced CT files of FRAMES zero frames of 512 x 512 (tests/enhanced_ct.py; each its
own series), starts ``edgeseg listen BUNDLE --idle 3600`` (nothing is segmented while they arrive;
``--max-associations`` and ``--max-connections-per-host`` let every sender in at once),
resets the node's peak resident memory (``/proc/PID/clear_refs``) once its model is loaded, then
runs one dcmtk ``storescu`` per file, all at once, and prints the node's resident memory before,
its peak while they ran (``VmHWM``), how many were acknowledged, and the wall time.

    OMP_NUM_THREADS=1 nice python benchmarks/listen_enhanced_ct_rss.py BUNDLE --frames 300 \\
        --senders 10 --out /tmp/ect-senders
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERIES = ROOT / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice"
SIZE = 512


def write_files(frames: int, senders: int, out: Path) -> list[Path]:
    """``senders`` uncompressed Enhanced CT files of ``frames`` zero frames of SIZE x SIZE, each
    with its own Series and SOP Instance UIDs."""
    sys.path.insert(0, str(ROOT))
    from tests.enhanced_ct import large_enhanced_ct, read_slices, series_copies

    ds = large_enhanced_ct(read_slices(SERIES)[0], frames, SIZE)
    ds.PixelData = bytes(frames * SIZE * SIZE * 2)
    out.mkdir(parents=True, exist_ok=True)
    return series_copies(ds, out, senders)


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"edgeseg listen did not open port {port} within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--port", type=int, default=11170)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    files = write_files(args.frames, args.senders, args.out / "sent")
    work = args.out / "tmp"
    work.mkdir(exist_ok=True)
    node = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(args.bundle), "--port", str(args.port),
                             "--out", str(args.out / "seg"), "--backend", "onnxruntime:fp32", "--idle", "3600",
                             # all senders from 127.0.0.1 at once: the per-host default leaves out two in ten
                             "--max-associations", str(args.senders + 2), "--max-connections-per-host", str(args.senders)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=str(work)))
    try:
        wait_port(args.port, 120)
        time.sleep(1)
        before = kib(node.pid, "VmRSS")
        Path(f"/proc/{node.pid}/clear_refs").write_text("5")  # VmHWM counts from here
        start = time.perf_counter()
        senders = [subprocess.Popen(["storescu", "-v", "-aec", "EDGESEG", "127.0.0.1", str(args.port), str(path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for path in files]
        results = [sender.communicate(timeout=1800) for sender in senders]
        wall = time.perf_counter() - start
        peak = kib(node.pid, "VmHWM")
    finally:
        node.kill()
        node.communicate()
    ok = sum(sender.returncode == 0 and "Received Store Response (Success)" in err for sender, (_, err) in zip(senders, results))
    size = files[0].stat().st_size
    print(f"{args.senders} senders x {size / 2**20:.0f} MiB ({args.frames} frames of {SIZE}x{SIZE}): "
          f"{ok} stored; node RSS before {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB "
          f"(+{(peak - before) / 1024:.0f} MiB, {(peak - before) * 1024 / size:.2f} x one file); {wall:.1f} s")


if __name__ == "__main__":
    main()
