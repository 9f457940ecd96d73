"""Load test of ``edgeseg serve`` or Triton: concurrent KServe v2 clients on loopback for a fixed time.

``run_load`` drives a running server with ``clients`` threads, each holding one keep-alive
HTTP connection and sending binary-tensor infer requests back to back; it counts errors
(any non-200 answer, a malformed body, or a wrong output size) and records per-request latency.
The network model (``NAME``) gets pre-processed float32 tensors at the model's size; the
pipeline model (``NAME-pipeline``) gets INT16 HU slices of a phantom abdomen at ``size``
pixels a side (512: a CT slice) and returns uint8 labels.
``load_test`` starts a real ``edgeseg serve`` process for a bundle, or with ``triton`` a real
``tritonserver`` over the ``--kind KIND_CPU`` repository of the bundle, warms it up, samples the
server's resident memory (with its child processes) after the warm-up and at the end, and runs
the load in between.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.manifest import read_manifest


PIPELINE_SUFFIX = "-pipeline"


def infer_request(batch: np.ndarray, input_name: str = "image", output_name: str = "logits",
                  extra: dict[str, np.ndarray] | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer request for ``batch`` (and the ``extra`` inputs by name) and its headers."""
    tensors = {input_name: batch, **(extra or {})}
    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int16): "INT16"}
    header = json.dumps({"inputs": [{"name": name, "shape": list(t.shape), "datatype": datatypes[t.dtype],
                                     "parameters": {"binary_data_size": t.nbytes}} for name, t in tensors.items()],
                         "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}).encode()
    return header + b"".join(t.tobytes() for t in tensors.values()), {
        "Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


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


def load_request(manifest, model: str, batch: int, size: int, seed: int = 0) -> tuple[bytes, dict[str, str], int]:
    """(body, headers, expected output bytes) of the request every client sends to ``model``."""
    if model.endswith(PIPELINE_SUFFIX):
        from edgeseg.data.phantom import synth_phantom

        phantom = synth_phantom("load", seed, shape=(max(batch, 4), size, size))
        stack = np.ascontiguousarray(np.clip(phantom.hu[:batch], -32768, 32767).astype(np.int16))
        # the phantom's own voxel size: a bundle that removes components by mL needs it, others ignore it
        spacing = np.asarray(phantom.spacing, dtype=np.float32)
        body, headers = infer_request(stack, "hu", "labels", extra={"spacing": spacing})
        return body, headers, stack.size
    _, c, h, w = manifest.inputs[0].shape
    k = manifest.outputs[0].shape[1]
    x = np.random.default_rng(seed).normal(0.3, 0.4, (batch, c, h, w)).astype(np.float32)
    body, headers = infer_request(x)
    return body, headers, batch * k * h * w * 4


def run_load(url: str, manifest, *, clients: int = 16, seconds: float = 60.0, batch: int = 1,
             model: str = "edgeseg", size: int = 512, seed: int = 0, request: tuple | None = None) -> dict:
    """Drive the server at ``url`` (host:port); return counts, latency percentiles and throughput.
    ``request``: (body, headers, expected output bytes) to send instead of :func:`load_request`'s."""
    host, _, port = url.rpartition(":")
    body, headers, expect = request or load_request(manifest, model, batch, size, seed)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop = threading.Event()
    # daemon threads, stopped in every case: an interrupted load test must not keep its clients
    # (and so the server's connections, which hold up the server's shutdown) alive
    threads = [threading.Thread(target=_client, args=(host, int(port), f"/v2/models/{model}/infer", body, headers,
                                                      expect, stop, latencies[i], errors), daemon=True)
               for i in range(clients)]
    start = time.perf_counter()
    try:
        for thread in threads:
            thread.start()
        time.sleep(seconds)
    finally:
        stop.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    merged = np.array([t for per in latencies for t in per]) * 1000
    return {
        "model": model, "clients": clients, "seconds": round(wall, 2), "batch": batch, "requests": int(merged.size),
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


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants (Triton's backend stubs) in MiB."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += rss_mb(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, DataError):  # a process that ended meanwhile
            continue
    return total


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(port: int, process: subprocess.Popen, log, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            log.seek(0)
            # its own one-line error, without its prefix (it was printed as a Python list)
            last = (log.read().strip().splitlines() or ["no message"])[-1].removeprefix("edgeseg: error: ")
            raise DataError(f"edgeseg serve did not start: {last}")
        with contextlib.suppress(OSError):  # not listening yet: ask again below
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return
        if time.monotonic() > deadline:
            raise DataError(f"edgeseg serve did not become ready within {timeout:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def edgeseg_server(bundle, name: str, max_batch: int, backend: str, threads: int, queue: int):
    """A real ``edgeseg serve`` process; yields (url, pid, backend it runs). Its messages go to a
    temporary file, not a pipe: nobody reads a pipe during the load, and a server that filled one
    (64 KB of logged errors) would stop, blocked on its next write."""
    port = _free_port()
    cmd = [sys.executable, "-m", "edgeseg.cli", "serve", str(bundle), "--port", str(port), "--backend", backend,
           "--threads", str(threads), "--max-batch", str(max_batch), "--queue-size", str(queue), "--model-name", name]
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            _wait_ready(port, server, log)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/v2/models/{name}")
            platform = json.loads(conn.getresponse().read()).get("platform", "")
            yield f"127.0.0.1:{port}", server.pid, f"edgeseg serve, {platform.removeprefix('edgeseg_') or backend}"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@contextlib.contextmanager
def triton_server(bundle, name: str, max_batch: int, backend: str):
    """A real ``tritonserver`` over the KIND_CPU repository of ``bundle``; yields (url, pid, label)."""
    from edgeseg.export.triton import write_triton_repo
    from edgeseg.serve.triton_launch import TritonServer

    runner, _, precision = backend.partition(":")
    if runner in ("", "auto") or not precision:
        raise DataError(f"--triton needs --backend NAME:PRECISION (e.g. onnxruntime:fp32), got {backend!r}")
    with tempfile.TemporaryDirectory(prefix="edgeseg-bench-triton-") as tmp:
        write_triton_repo(bundle, Path(tmp) / "repo", name=name, precision=precision, max_batch=max_batch,
                          kind="KIND_CPU", backend=runner)
        with TritonServer(Path(tmp) / "repo", workdir=Path(tmp) / "server") as server:
            yield server.url, server.process.pid, f"tritonserver (Python backend), {backend}"


def check_load_batch(manifest, batch: int, max_batch: int) -> None:
    """DataError for requests of ``batch`` slices that the server, started with ``max_batch``,
    would refuse: it takes at most min(max_batch, the bundle's) and answers 400 to more, so such
    a load would measure nothing, after a full warm-up and run."""
    limit = min(max_batch, manifest.max_batch)
    if batch > limit:
        which = "--max-batch" if max_batch <= manifest.max_batch else "the bundle's max batch"
        raise DataError(f"--batch {batch} is above {which} {limit}; the server would refuse every request")


def load_test(bundle: str | Path, *, clients: int = 16, seconds: float = 60.0, warmup: float = 5.0, batch: int = 1,
              max_batch: int = 8, backend: str = "auto", threads: int = 0, model: str = "edgeseg", size: int = 512,
              triton: bool = False) -> dict:
    """Start ``edgeseg serve`` (or Triton) for ``bundle``, warm it up, load ``model``, report RSS growth too."""
    manifest = read_manifest(bundle)
    check_load_batch(manifest, batch, max_batch)
    name = model.removesuffix(PIPELINE_SUFFIX)
    if triton:
        server = triton_server(bundle, name, max_batch, backend)
    else:
        server = edgeseg_server(bundle, name, max_batch, backend, threads, max(64, 4 * clients))
    with server as (url, pid, label):
        run_load(url, manifest, clients=clients, seconds=warmup, batch=batch, model=model, size=size)
        rss_start = tree_rss_mb(pid)
        result = run_load(url, manifest, clients=clients, seconds=seconds, batch=batch, model=model, size=size)
        rss_end = tree_rss_mb(pid)
    result.update(rss_start_mb=round(rss_start, 1), rss_end_mb=round(rss_end, 1),
                  rss_growth=round(rss_end / rss_start - 1, 4), backend=label,
                  max_batch=min(max_batch, manifest.max_batch),  # what the server ran with, not what was asked
                  size=size if model.endswith(PIPELINE_SUFFIX) else manifest.spec.size[0])
    return result
