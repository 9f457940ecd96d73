"""Peak resident memory of `edgeseg serve` answering one large /v1/segment upload.

Starts ``edgeseg serve BUNDLE`` as its own process, sends it one CT volume (int16, DEPTH x SIDE x
SIDE, as NPY or NIfTI .nii.gz), checks the mask's shape, and prints the server's peak RSS
(``VmHWM`` from /proc) before and after the upload, and the growth as a multiple of the
volume's bytes. Everything is written under OUT.

    python benchmarks/serve_upload_rss.py BUNDLE OUT [--side 512] [--depth 600] [--format npy|nifti]
    python benchmarks/serve_upload_rss.py BUNDLE OUT --upload ct600.nii.gz   # a file of your own
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np


def _volume(depth: int, side: int) -> np.ndarray:
    """A body-like phantom: air, an ellipse of soft tissue with noise, a brighter organ."""
    yy, xx = np.mgrid[:side, :side]
    body = ((yy - side / 2) / (0.4 * side)) ** 2 + ((xx - side / 2) / (0.45 * side)) ** 2 < 1
    organ = ((yy - side / 2) / (0.15 * side)) ** 2 + ((xx - side / 3) / (0.12 * side)) ** 2 < 1
    rng = np.random.default_rng(0)
    hu = np.full((depth, side, side), -1000, np.int16)
    for z in range(depth):
        slice_ = hu[z]
        slice_[body] = 40 + rng.integers(-20, 20, int(body.sum()), dtype=np.int16)
        slice_[organ] = 90
    return hu


def _write(hu: np.ndarray, fmt: str, out: Path) -> Path:
    if fmt == "npy":
        path = out / "upload.npy"
        np.save(path, hu)
    else:
        import nibabel

        path = out / "upload.nii.gz"
        nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), np.eye(4)), path)
    return path


def _hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--depth", type=int, default=600)
    parser.add_argument("--format", choices=("npy", "nifti"), default="npy")
    parser.add_argument("--upload", type=Path, help="send this file instead of a phantom")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.upload is not None:
        upload, args.format = args.upload, "file"
    else:
        upload = _write(_volume(args.depth, args.side), args.format, args.out)
    port = _free_port()
    command = [sys.executable, "-m", "edgeseg.cli", "serve", args.bundle, "--port", str(port),
               "--backend", "onnxruntime:fp32", "--max-body-mb", "2048", "--timeout", "600"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready"):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("edgeseg serve did not start")
            time.sleep(0.2)
        before = _hwm_kib(server.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        with open(upload, "rb") as body:
            started = time.perf_counter()
            conn.request("POST", "/v1/segment?format=npy", body=body,
                         headers={"Content-Length": str(upload.stat().st_size)})
            reply = conn.getresponse()
            data = reply.read()
            seconds = time.perf_counter() - started
        if reply.status != 200:
            raise SystemExit(f"upload answered {reply.status}: {data[:300]!r}")
        labels = np.load(io.BytesIO(data), allow_pickle=False)
        volume_mib = labels.size * 2 / 2**20  # int16, one voxel per label
        after = _hwm_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    growth = (after - before) / 1024
    print(f"upload: {args.format} {upload.stat().st_size / 2**20:.1f} MiB, mask {labels.shape}, "
          f"answered in {seconds:.1f} s")
    print(f"server peak RSS (VmHWM): {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after; "
          f"growth {growth:.1f} MiB = {growth / volume_mib:.2f}x the int16 volume ({volume_mib:.1f} MiB)")


if __name__ == "__main__":
    main()
