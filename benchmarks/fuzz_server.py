"""KServe v2 request fuzzing against a real ``edgeseg serve`` on 127.0.0.1.

Seeds are valid infer requests for the fuzz bundle's one input (JSON ``data``, and JSON
header plus binary tensor bytes with ``Inference-Header-Content-Length``). A 2xx answer is a
success, another 4xx a clean error; a 5xx answer counts as a traceback (the server failed on
the input), a refused or reset connection as a crash (the server is restarted), no answer
within the time limit as a hang. The server runs under ``RLIMIT_AS``; a ``MemoryError`` in its
log counts as over memory. The server's log is kept (next to the saved failing cases) only
when a case failed.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fuzz_mutations as fm
from fuzz_inputs import Tally
from fuzz_targets import ROOT

SERVER_MEMORY_BYTES = 6 << 30
INPUT_SHAPE = [1, 1, 64, 64]
MODEL = "edgeseg"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """An ``edgeseg serve`` subprocess on a free loopback port; restartable after it dies."""

    def __init__(self, bundle: Path, log: Path) -> None:
        self.bundle, self.log, self.process, self.port = bundle, log, None, 0

    def start(self) -> None:
        self.port = _free_port()

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (SERVER_MEMORY_BYTES, SERVER_MEMORY_BYTES))

        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgeseg.cli", "serve", str(self.bundle), "--port", str(self.port),
                 "--backend", "onnxruntime", "--threads", "1", "--timeout", "20"],
                stdout=log, stderr=log, env=env, preexec_fn=limit)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"edgeseg serve exited with {self.process.returncode}; see {self.log}")
            try:
                if self.request("GET", "/v2/health/ready", b"", {}, 5)[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"edgeseg serve did not become ready; see {self.log}")

    def request(self, method: str, path: str, body: bytes, headers: dict, timeout: float) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _seed_document(rng: random.Random) -> dict:
    values = [round(rng.uniform(-3, 3), 3) for _ in range(64 * 64)]
    return {"id": "fuzz", "inputs": [{"name": "image", "shape": list(INPUT_SHAPE), "datatype": "FP32", "data": values}],
            "outputs": [{"name": "logits"}]}


def _json_case(rng: random.Random) -> tuple[bytes, dict]:
    document = _seed_document(rng)
    if rng.random() < 0.6:
        document = fm.edit_json(document, rng)
        body = json.dumps(document).encode()
    else:
        body = fm.mutate_bytes(json.dumps(document).encode(), rng)
    return body, {"Content-Type": "application/json"}


def _binary_case(rng: random.Random) -> tuple[bytes, dict]:
    import numpy as np

    tensor = np.asarray([rng.uniform(-3, 3) for _ in range(64)] * 64, dtype="<f4").tobytes()
    header = {"inputs": [{"name": "image", "shape": list(INPUT_SHAPE), "datatype": "FP32",
                          "parameters": {"binary_data_size": len(tensor)}}],
              "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    if rng.random() < 0.5:
        header = fm.edit_json(header, rng)
    text = json.dumps(header).encode()
    length = len(text)
    body = text + tensor
    action = rng.randrange(4)
    if action == 0:
        body = fm.mutate_bytes(body, rng)
    elif action == 1:
        length = rng.choice((0, -1, length - 1, length + 1, len(body), len(body) + 1, 2**63, "abc"))
    elif action == 2:
        body = text + fm.mutate_bytes(tensor, rng)
    return body, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(length)}


def run_server_format(name: str, bundle: Path, count: int, seed: int, findings: Path | None,
                      timeout_s: int = 30, start: int = 0) -> Tally:
    """Send ``count`` mutated requests of ``name`` (kserve-json / kserve-binary), indices from
    ``start``; returns the tally."""
    tally, began = Tally(), time.perf_counter()
    log = Path(tempfile.mkstemp(prefix="edgeseg-fuzz-serve-", suffix=".log")[1])
    server = Server(bundle, log)
    server.start()
    make = _json_case if name == "kserve-json" else _binary_case
    try:
        for index in range(start, start + count):
            rng = random.Random(f"{seed}:{name}:{index}")
            body, headers = make(rng)
            try:
                status, answer = server.request("POST", f"/v2/models/{MODEL}/infer", body, headers, timeout_s)
                outcome = "success" if status < 300 else "clean error" if status < 500 else "traceback"
            except (TimeoutError, socket.timeout):
                outcome, status, answer = "hang", 0, b""
            except OSError:
                outcome, status, answer = "crash", 0, b""
            if outcome in ("crash", "hang") or not server.alive():
                server.stop()
                if "MemoryError" in log.read_text(errors="replace").split("--- restart ---")[-1]:
                    outcome = "over memory"
                with open(log, "a") as handle:
                    handle.write("\n--- restart ---\n")
                server.start()
            tally.counts[outcome] += 1
            if outcome in ("traceback", "crash", "hang", "over memory"):
                tally.failures.append(index)
                if findings is not None:
                    case = findings / f"{name}-{seed}-{index}"
                    case.mkdir(parents=True, exist_ok=True)
                    (case / "body").write_bytes(body)
                    (case / "headers.json").write_text(json.dumps(headers))
                    (case / "answer").write_bytes(f"{status}\n".encode() + answer[:4000])
    finally:
        server.stop()
        if tally.failures and findings is not None:
            findings.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, findings / f"{name}-{seed}-server.log")
        log.unlink(missing_ok=True)
    tally.seconds = time.perf_counter() - began
    return tally
