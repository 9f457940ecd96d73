"""Load test of ``edgeseg serve``: concurrent KServe v2 clients on loopback for a fixed time.

``run_load`` drives a running server with ``clients`` threads, each holding one keep-alive
HTTP connection and sending binary-tensor infer requests back to back; it counts errors
(any non-200 answer, a malformed body, or a wrong output shape) and records per-request latency.
``load_test`` starts a real ``edgeseg serve`` process for a bundle, warms it up, samples its
resident memory after the warm-up and at the end, and runs the load in between.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.manifest import read_manifest


def infer_request(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer request for ``batch`` and its headers."""
    header = json.dumps({"inputs": [{"name": "image", "shape": list(batch.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": batch.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header + batch.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}


def _client(host: str, port: int, path: str, body: bytes, headers: dict, expect_bytes: int, stop: threading.Event,
            latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=60)
            continue
        elapsed = time.perf_counter() - start
        if response.status != 200:
            errors.append(f"HTTP {response.status}: {data[:200]!r}")
            continue
        length = int(response.getheader("Inference-Header-Content-Length", "0"))
        if len(data) - length != expect_bytes:
            errors.append(f"response holds {len(data) - length} tensor bytes, expected {expect_bytes}")
            continue
        latencies.append(elapsed)
    conn.close()


def run_load(url: str, manifest, *, clients: int = 16, seconds: float = 60.0, batch: int = 1,
             model: str = "edgeseg", seed: int = 0) -> dict:
    """Drive the server at ``url`` (host:port); return counts, latency percentiles and throughput."""
    host, _, port = url.rpartition(":")
    _, c, h, w = manifest.inputs[0].shape
    k = manifest.outputs[0].shape[1]
    x = np.random.default_rng(seed).normal(0.3, 0.4, (batch, c, h, w)).astype(np.float32)
    body, headers = infer_request(x)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(host, int(port), f"/v2/models/{model}/infer", body, headers,
                                                      batch * k * h * w * 4, stop, latencies[i], errors))
               for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    merged = np.array([t for per in latencies for t in per]) * 1000
    return {
        "clients": clients, "seconds": round(wall, 2), "batch": batch, "requests": int(merged.size),
        "errors": len(errors), "first_errors": errors[:5],
        "p50_ms": round(float(np.percentile(merged, 50)), 2) if merged.size else None,
        "p99_ms": round(float(np.percentile(merged, 99)), 2) if merged.size else None,
        "requests_per_s": round(merged.size / wall, 1), "slices_per_s": round(merged.size * batch / wall, 1),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise DataError(f"no VmRSS for process {pid}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_test(bundle: str | Path, *, clients: int = 16, seconds: float = 60.0, warmup: float = 5.0, batch: int = 1,
              max_batch: int = 8, backend: str = "auto", threads: int = 0) -> dict:
    """Start ``edgeseg serve`` for ``bundle``, warm it up, load it, and report RSS growth too."""
    manifest = read_manifest(bundle)
    port = _free_port()
    cmd = [sys.executable, "-m", "edgeseg.cli", "serve", str(bundle), "--port", str(port), "--backend", backend,
           "--threads", str(threads), "--max-batch", str(max_batch), "--queue-size", str(max(64, 4 * clients))]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise DataError(f"edgeseg serve exited: {server.stderr.read().strip().splitlines()[-1:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise DataError("edgeseg serve did not become ready within 60 s") from None
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v2/models/edgeseg")
        platform = json.loads(conn.getresponse().read()).get("platform", "")
        run_load(url, manifest, clients=clients, seconds=warmup, batch=batch)
        rss_start = rss_mb(server.pid)
        result = run_load(url, manifest, clients=clients, seconds=seconds, batch=batch)
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result.update(rss_start_mb=round(rss_start, 1), rss_end_mb=round(rss_end, 1),
                  rss_growth=round(rss_end / rss_start - 1, 4),
                  backend=platform.removeprefix("edgeseg_") or backend, max_batch=max_batch)
    return result
