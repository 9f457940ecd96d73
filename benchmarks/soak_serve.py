"""The round of requests benchmarks/soak.py sends `edgeseg serve`, over and over.

Each round: KServe v2 inferences (JSON and binary tensors; the network and the pipeline model;
four binary ones at once, so that they batch), ``/v1/segment`` uploads (NIfTI, the same sent with
``Content-Encoding: gzip``, a DICOM slice of the dcmqi series, NPY), metadata and ``/metrics``,
and bad requests: malformed JSON, INT32 to the network, a body over ``--max-body-mb``, a binary
tensor shorter than announced, an unknown model, an upload that is no image, and a client that
closes its connection halfway through its body. Answers are counted by status.
"""

from __future__ import annotations

import collections
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from serve_upload_rss import _free_port, _volume, _write

ROOT = Path(__file__).resolve().parents[1]
DICOM_SLICE = ROOT / "tests" / "data" / "dcmqi_ct_liver" / "ct-3slice" / "01.dcm"
MAX_BODY_MB = 4


def _binary_infer(model: str, name: str, array: np.ndarray, datatype: str, output: str, short: int = 0):
    raw = array.tobytes()
    header = json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()
    return ("POST", f"/v2/models/{model}/infer", header + raw[:len(raw) - short],
            {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})


def _json_infer(model: str, name: str, array: np.ndarray, datatype: str):
    body = json.dumps({"inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype,
                                   "data": array.ravel().tolist()}]}).encode()
    return ("POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})


def request_round(bundle: Path, files: Path) -> tuple[list, tuple]:
    """The requests of one round (made once; their files under ``files``) and the one request
    sent four times at once."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    side = int(manifest["spec"]["size"][0])
    rng = np.random.default_rng(0)
    image = rng.random((1, 1, side, side), dtype=np.float32)  # the normalised range, 0..1
    hu = _volume(3, 96)
    files.mkdir()
    nifti = _write(_volume(8, 128), "nifti", files).read_bytes()
    raw_nifti = gzip.decompress(nifti)
    npy = _write(_volume(4, 96), "npy", files).read_bytes()
    requests = [
        _json_infer("edgeseg", "image", image, "FP32"),
        _binary_infer("edgeseg", "image", np.repeat(image, 2, axis=0), "FP32", "logits"),
        _binary_infer("edgeseg-pipeline", "hu", hu, "INT16", "labels"),
        _json_infer("edgeseg-pipeline", "hu", hu[:1, :32, :32].copy(), "INT16"),
        ("POST", "/v1/segment?format=nifti", nifti, {}),
        ("POST", "/v1/segment?format=npy", gzip.compress(raw_nifti, 1), {"Content-Encoding": "gzip"}),
        ("POST", "/v1/segment?format=npy", DICOM_SLICE.read_bytes(), {}),
        ("POST", "/v1/segment?format=npy", npy, {}),
        ("GET", "/v2/models/edgeseg", None, {}),
        ("GET", "/metrics", None, {}),
        # bad requests
        ("POST", "/v2/models/edgeseg/infer", b'{"inputs": [', {"Content-Type": "application/json"}),
        _json_infer("edgeseg", "image", image.astype(np.int32), "INT32"),
        ("POST", "/v1/segment?format=npy", bytes((MAX_BODY_MB << 20) + 1), {}),
        _binary_infer("edgeseg", "image", image, "FP32", "logits", short=100),
        _json_infer("nosuchmodel", "image", image[:, :, :4, :4].copy(), "FP32"),
        ("POST", "/v1/segment?format=npy", b"this is not an image" * 100, {}),
    ]
    return requests, _binary_infer("edgeseg", "image", image, "FP32", "logits")


class ServeDriver:
    """``edgeseg serve BUNDLE`` in a child process (ONNX Runtime FP32, one thread), its uploads
    under ``work``; ``round()`` sends one round and returns the answers' status counts."""

    def __init__(self, bundle: Path, work: Path, env: dict[str, str]):
        self.work = work / "uploads"
        self.work.mkdir()
        self.port = _free_port()
        command = [sys.executable, "-m", "edgeseg.cli", "serve", str(bundle), "--port", str(self.port),
                   "--backend", "onnxruntime:fp32", "--threads", "1", "--max-body-mb", str(MAX_BODY_MB),
                   "--timeout", "10", "--upload-dir", str(self.work)]
        self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "wb"),
                                       env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        self.pid = self.server.pid
        self._wait_ready()
        self.requests, self.burst = request_round(bundle, work / "files")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2):
                    return
            except OSError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("edgeseg serve did not start") from None
                time.sleep(0.3)

    def _send(self, method: str, path: str, body: bytes | None, headers: dict) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            reply.read()
            return str(reply.status)
        except (ConnectionError, socket.timeout) as exc:  # a 413 may close the connection mid-send
            return type(exc).__name__
        finally:
            conn.close()

    def _gone_mid_body(self) -> str:
        """A client that announces a body, sends half of it, and closes its connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/segment?format=npy HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + bytes(50000))
        return "gone"

    def round(self) -> collections.Counter:
        counts = collections.Counter(self._send(*request) for request in self.requests)
        counts[self._gone_mid_body()] += 1
        answers: list[str] = []
        threads = [threading.Thread(target=lambda: answers.append(self._send(*self.burst))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counts.update(answers)
        return counts

    def close(self) -> dict:
        self.server.terminate()
        return {"exit_status": self.server.wait(timeout=60)}
