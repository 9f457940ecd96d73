"""Requests that time out while they wait for the model, on a real server on 127.0.0.1: each
frees its queue place the moment it is answered 504, so that, while the model is still busy, a
new request is queued rather than refused 503; it is never run; and /metrics and the statistics
extension count it as failed, not as waiting."""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tests.serve.http_util import http_request

pytest.importorskip("fastapi")


def _post(server, path: str, body: bytes) -> tuple[int, dict]:
    status, _, data = http_request(server.url, "POST", path, body, timeout=60)
    return status, json.loads(data) if data.startswith(b"{") else {}


def _network_body() -> bytes:
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def _pipeline_body() -> bytes:
    hu = np.full((1, 64, 64), -1000, np.int16)
    hu[:, 16:48, 12:52] = 50
    return json.dumps({"inputs": [{"name": "hu", "shape": list(hu.shape), "datatype": "INT16",
                                   "data": hu.ravel().tolist()}]}).encode()


def _npy_upload() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.full((1, 64, 64), 40, np.int16))
    return buffer.getvalue()


def _metric(server, name: str) -> float:
    text = http_request(server.url, "GET", "/metrics")[2].decode()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, (name, text)
    return float(match.group(1))


def test_a_request_that_expires_in_the_queue_frees_its_place_at_once(server_factory, gate_model):
    """Queue of one place, the model held by request A: B waits, times out (504); with the model
    still held, C is queued (it too times out) instead of being refused 503 for a place that B,
    already answered, kept until the batcher next looked at its queue."""
    server = server_factory(max_batch=1, queue_size=1, timeout_s=0.5)
    entered, release = gate_model(server)
    infer = "/v2/models/edgeseg/infer"
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(_post, server, infer, _network_body())
            assert entered.wait(30), "request A never reached the model"
            assert _post(server, infer, _network_body())[0] == 504  # B
            status, answer = _post(server, infer, _network_body())  # C, while A still holds the model
            assert status == 504, answer
            assert answer == {"error": "inference did not finish within 0.5 s"}
            assert _metric(server, "edgeseg_queue_depth") == 0  # B and C, answered, wait no more
        finally:
            release.set()
        assert held.result(timeout=60)[0] == 504  # A's batch had started: it ran, its answer was late
    assert _post(server, infer, _network_body())[0] == 200
    stats = server.app.state.models["edgeseg"].stats.to_dict("edgeseg")
    assert stats["execution_count"] == 2  # A's batch and the last request's: B and C never ran
    assert (stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]) == (1, 3)
    assert _metric(server, 'edgeseg_inference_request_failure_total{model="edgeseg"}') == 3
    assert 'code="503"' not in http_request(server.url, "GET", "/metrics")[2].decode()  # nobody was refused


def test_a_request_that_expires_while_its_batch_waits_for_the_model_is_not_run(server_factory, gate_model):
    """The network model's request A holds the model; a pipeline request P is gathered into a
    batch that waits for the model lock and times out (504). Once A is done, P's batch is dropped,
    not run for nobody: the pipeline's statistics count one model call, the next request's."""
    server = server_factory(max_batch=4, timeout_s=0.5)
    entered, release = gate_model(server)
    pipeline = server.app.state.models["edgeseg-pipeline"]
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(_post, server, "/v2/models/edgeseg/infer", _network_body())
            assert entered.wait(30), "request A never reached the model"
            assert _post(server, "/v2/models/edgeseg-pipeline/infer", _pipeline_body())[0] == 504
            assert _metric(server, "edgeseg_queue_depth") == 0
        finally:
            release.set()
        assert held.result(timeout=60)[0] == 504
    status, answer = _post(server, "/v2/models/edgeseg-pipeline/infer", _pipeline_body())
    assert status == 200, answer
    stats = pipeline.stats.to_dict(pipeline.name)
    assert (stats["execution_count"], stats["inference_count"]) == (1, 1)
    assert (stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"]) == (1, 1)


def test_an_upload_that_expires_frees_its_place_at_once(server_factory, gate_model):
    """Upload queue of one place, the model held by a /v2 request: the first upload times out
    (504); with the model still held, the second is queued (and times out too) instead of 503."""
    server = server_factory(max_batch=4, queue_size=1, timeout_s=0.5)
    entered, release = gate_model(server)
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(_post, server, "/v2/models/edgeseg/infer", _network_body())
            assert entered.wait(30), "the /v2 request never reached the model"
            assert _post(server, "/v1/segment", _npy_upload())[0] == 504
            status, answer = _post(server, "/v1/segment", _npy_upload())
            assert status == 504, answer
            assert answer == {"error": "the model did not start on the upload within 0.5 s"}
            assert _metric(server, "edgeseg_queue_depth") == 0
        finally:
            release.set()
        assert held.result(timeout=60)[0] == 504
    status, answer = _post(server, "/v1/segment", _npy_upload())
    assert status == 200, answer
    assert server.app.state.uploads.depth == 0
