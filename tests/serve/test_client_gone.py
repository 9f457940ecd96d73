"""A client that closes its connection while its request waits in the queue, on a real server on
127.0.0.1 driven over a raw socket: the request is dropped before it reaches the model, counted
as 499 in /metrics, and as a failure, not a success, in the statistics."""

from __future__ import annotations

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tests.serve.http_util import http_request
from tests.serve.test_http_connections import _metric, _wait_for

pytest.importorskip("fastapi")


def _infer_body() -> bytes:
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def _upload_body() -> tuple[np.ndarray, bytes]:
    hu = np.full((1, 64, 64), -1000, np.int16)
    hu[:, 16:48, 12:52] = 50
    buffer = io.BytesIO()
    np.save(buffer, hu)
    return hu, buffer.getvalue()


def _send_whole_then_close(port: int, path: str, body: bytes, queued, what: str) -> None:
    """Send one whole request, wait until ``queued()`` says it waits for the model, then close."""
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        _wait_for(queued, what)


def _hold_the_model(server, entered, pool):
    held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
    assert entered.wait(30), "the /v2 request never reached the model"
    return held


def test_a_v2_request_whose_client_left_while_queued_never_reaches_the_model(server_factory, gate_model):
    server = server_factory(max_batch=4)
    entered, release = gate_model(server)
    batcher = server.app.state.models["edgeseg"].batcher
    closed = r'edgeseg_requests_total\{code="499",endpoint="model_infer"\}'
    with ThreadPoolExecutor(1) as pool:
        try:
            held = _hold_the_model(server, entered, pool)
            _send_whole_then_close(server.port, "/v2/models/edgeseg/infer", _infer_body(),
                                   lambda: batcher.depth == 1, "the request never reached the queue")
            _wait_for(lambda: _metric(server.url, closed) == 1, "the request was counted as 499")
        finally:
            release.set()
        assert held.result(timeout=30)[0] == 200
    _wait_for(lambda: batcher.depth == 0, "the queue emptied")
    assert http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())[0] == 200
    status, _, data = http_request(server.url, "GET", "/v2/models/edgeseg/stats")
    stats = json.loads(data)["model_stats"][0]
    # two model calls, for the request that held the model and the one sent after: none for the dropped one
    assert (stats["execution_count"], stats["inference_count"]) == (2, 2)
    requests = stats["inference_stats"]
    assert (requests["success"]["count"], requests["fail"]["count"]) == (2, 1)
    assert _metric(server.url, r'edgeseg_requests_total\{code="200",endpoint="model_infer"\}') == 2


def test_an_upload_whose_client_left_while_queued_never_reaches_the_model(server_factory, serve_bundle, gate_model,
                                                                         monkeypatch):
    from edgeseg.runtime.segmenter import Segmenter

    server = server_factory(max_batch=4)
    entered, release = gate_model(server)
    volumes, real = [], Segmenter.predict_volume

    def counted(self, hu, *args, **kwargs):
        volumes.append(hu)
        return real(self, hu, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_volume", counted)
    hu, body = _upload_body()
    closed = r'edgeseg_requests_total\{code="499",endpoint="segment"\}'
    waiting = lambda: server.app.state.uploads.queued == 1  # noqa: E731  (read, waiting for the model)
    with ThreadPoolExecutor(1) as pool:
        try:
            held = _hold_the_model(server, entered, pool)
            _send_whole_then_close(server.port, "/v1/segment", body, waiting, "the upload never waited for the model")
            _wait_for(lambda: _metric(server.url, closed) == 1, "the upload was counted as 499")
        finally:
            release.set()
        assert held.result(timeout=30)[0] == 200
    assert server.app.state.uploads.depth == 0  # the dropped upload left the queue when its client left
    status, _, data = http_request(server.url, "POST", "/v1/segment", body)
    assert status == 200, data
    assert len(volumes) == 1  # the upload sent after; the dropped one never ran
    monkeypatch.setattr(Segmenter, "predict_volume", real)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(hu))
    assert _metric(server.url, r'edgeseg_requests_total\{code="200",endpoint="segment"\}') == 1
