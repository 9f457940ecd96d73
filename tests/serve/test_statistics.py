"""Triton's statistics extension on a real server on 127.0.0.1, read with tritonclient: every
duration perf_analyzer reads, per request and per batch size, measured for real."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (present with tritonclient)

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def _infer(url: str, slices: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0.3, 0.4, (slices, 1, 64, 64)).astype(np.float32)
    client = tritonclient_http.InferenceServerClient(url=url)
    tensor = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return client.infer("edgeseg", [tensor]).as_numpy("logits")


def test_statistics_count_every_phase_and_batch_size(server_factory, gate_model):
    """Request A (1 slice) is held in the model while B (1 slice) and C (2 slices) queue; opened,
    B and C run as one batch of 3; then D (1 slice) runs alone. The model's gate is the test's,
    so which request runs in which batch does not depend on this machine's speed."""
    server = server_factory(max_batch=4, queue_size=4)
    entered, release = gate_model(server)
    batcher = server.app.state.models["edgeseg"].batcher
    client = tritonclient_http.InferenceServerClient(url=server.url)
    with ThreadPoolExecutor(3) as pool:
        try:
            a = pool.submit(_infer, server.url, 1, 0)
            assert entered.wait(30), "request A never reached the model"
            held_from = time.perf_counter_ns()
            b, c = pool.submit(_infer, server.url, 1, 1), pool.submit(_infer, server.url, 2, 2)
            deadline = time.monotonic() + 30
            while batcher.depth < 2:
                assert time.monotonic() < deadline, "B and C never reached the queue"
                time.sleep(0.005)
            queued_by = time.perf_counter_ns()
            time.sleep(0.05)  # a wait long enough to see in the statistics (bounded below, not timed)
        finally:
            released = time.perf_counter_ns()
            release.set()
        assert [f.result().shape[0] for f in (a, b, c)] == [1, 1, 2]
    _infer(server.url, 1, 3)
    with pytest.raises(InferenceServerException):  # refused before it is queued: no inference, no failure
        _infer(server.url, 5)

    stats = client.get_inference_statistics("edgeseg")["model_stats"][0]
    requests = stats["inference_stats"]
    assert requests["success"]["count"] == 4 and requests["fail"]["count"] == 0
    for phase in PHASES:
        assert requests[phase]["count"] == 4, (phase, requests[phase])
        assert requests[phase]["ns"] > 0, (phase, requests[phase])
    assert requests["cache_hit"] == {"count": 0, "ns": 0}
    # B and C were queued by `queued_by` and started after `released`; A's model call began
    # before `held_from` and ended after `released`
    assert requests["queue"]["ns"] >= 2 * (released - queued_by)
    assert requests["compute_infer"]["ns"] >= released - held_from
    # the four phases of a request are disjoint parts of its time from decoding to encoding
    assert requests["success"]["ns"] >= sum(requests[phase]["ns"] for phase in PHASES)
    assert stats["inference_count"] == 5 and stats["execution_count"] == 3
    batches = {entry["batch_size"]: entry for entry in stats["batch_stats"]}
    assert sorted(batches) == [1, 3]
    for size, runs in ((1, 2), (3, 1)):
        for phase in ("compute_input", "compute_infer", "compute_output"):
            assert batches[size][phase]["count"] == runs, (size, phase)
            assert batches[size][phase]["ns"] > 0, (size, phase)
    assert batches[1]["compute_infer"]["ns"] >= released - held_from  # A's call, held by the test


def test_fail_counts_what_triton_counts_and_metrics_agree(server_factory, gate_model):
    """Triton counts in ``fail`` the requests it accepted for the model that then failed (timed
    out in the queue, cancelled, failed in the backend); a request refused before it is queued
    (unparsable JSON, a wrong shape or batch size, a full queue) is answered with its error but is
    no inference of the model. Here two requests time out (504): fail 2; three are refused: not
    counted. /metrics reads the same counts."""
    import http.client
    import re

    server = server_factory(max_batch=1, queue_size=1, timeout_s=0.5)
    entered, release = gate_model(server)
    batcher = server.app.state.models["edgeseg"].batcher

    def post(body: bytes) -> int:
        conn = http.client.HTTPConnection(*server.url.split(":"), timeout=30)
        conn.request("POST", "/v2/models/edgeseg/infer", body=body)
        status = conn.getresponse().status
        conn.close()
        return status

    x = np.zeros((1, 1, 64, 64), np.float32)
    body = ('{"inputs":[{"name":"image","shape":[1,1,64,64],"datatype":"FP32","data":%s}]}'
            % x.ravel().tolist()).encode()
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(post, body)
            assert entered.wait(30), "the first request never reached the model"
            queued = pool.submit(post, body)
            deadline = time.monotonic() + 30
            while batcher.depth < 1:
                assert time.monotonic() < deadline, "the second request never reached the queue"
                time.sleep(0.005)
            assert post(body) == 503  # the queue's one place is taken
            assert queued.result(timeout=30) == 504  # dropped from the queue unrun
        finally:
            release.set()
        assert held.result(timeout=30) == 504  # its batch had started: it runs, its answer is late
    assert batcher.depth == 0  # the expired request left the queue when it was answered
    assert post(b'{"inputs": [') == 400
    assert post(body.replace(b"[1,1,64,64]", b"[1,1,64,32]")) == 400
    assert post(body) == 200

    client = tritonclient_http.InferenceServerClient(url=server.url)
    requests = client.get_inference_statistics("edgeseg")["model_stats"][0]["inference_stats"]
    assert (requests["success"]["count"], requests["fail"]["count"]) == (1, 2)
    conn = http.client.HTTPConnection(*server.url.split(":"), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert re.search(r'edgeseg_inference_request_success_total\{model="edgeseg"\} 1\.0', text), text
    assert re.search(r'edgeseg_inference_request_failure_total\{model="edgeseg"\} 2\.0', text), text
    assert re.search(r'edgeseg_inference_request_failure_total\{model="edgeseg-pipeline"\} 0\.0', text), text
