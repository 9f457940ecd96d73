"""The bytes a real server on 127.0.0.1 holds for requests in flight are bounded by its budget
(--max-inflight-bytes): an upload is refused from its header, before its volume is allocated, and
every refusal for overload is a 503 with Retry-After and a JSON error naming the budget."""

from __future__ import annotations

import gzip
import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tests.serve.http_util import http_request

pytest.importorskip("fastapi")

SLICE = 64 * 64  # pixels of one test slice; a volume counts 4 bytes a pixel (float32 HU)




def _npy(hu: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, hu)
    return buffer.getvalue()


def _hu(slices: int = 1) -> np.ndarray:
    hu = np.full((slices, 64, 64), -1000, np.int16)
    hu[:, 16:48, 12:52] = 50
    return hu


def _infer_body(slices: int = 1) -> bytes:
    x = np.random.default_rng(0).normal(0.3, 0.4, (slices, 1, 64, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def _nifti_header_only(slices: int) -> bytes:
    """A .nii.gz whose header claims 64 x 64 x ``slices`` INT16 voxels and that holds none: read
    whole, it is refused as truncated; refused from its header, it never is."""
    import nibabel as nib

    image = nib.Nifti1Image(np.zeros((64, 64, slices), np.int16), np.eye(4))
    image.set_qform(np.eye(4), code=1)
    header = image.header.binaryblock + b"\0" * 4  # the 348-byte header and its extension flag
    return gzip.compress(header)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _assert_busy(status, headers, data, budget: int) -> None:
    assert status == 503, (status, data)
    assert headers.get("retry-after") == "1", headers
    message = json.loads(data)["error"]
    assert f"budget of {budget} bytes (--max-inflight-bytes)" in message, message


def test_an_upload_over_the_budget_is_503_from_its_header(server_factory, serve_bundle, gate_model):
    """A /v2 request (one slice) sits in the model and an upload (one slice) waits for it: they
    hold 2 slices of the budget of 4. An upload whose header claims 4 slices is refused from its
    header: its file holds no voxels, which a reading would have found (400)."""
    from edgeseg.runtime.segmenter import Segmenter

    budget = 4 * SLICE * 4
    server = server_factory(max_batch=4, max_inflight_bytes=budget)
    entered, release = gate_model(server)
    state = server.app.state
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
            assert entered.wait(30), "the /v2 request never reached the model"
            waiting = pool.submit(http_request, server.url, "POST", "/v1/segment", _npy(_hu()))
            _wait_for(lambda: state.budget.held == 2 * SLICE * 4, "the upload never took its bytes")
            metrics = http_request(server.url, "GET", "/metrics")[2].decode()
            assert f"edgeseg_inflight_bytes {2 * SLICE * 4}.0" in metrics
            _assert_busy(*http_request(server.url, "POST", "/v1/segment", _nifti_header_only(4)), budget)
        finally:
            release.set()
        assert held.result()[0] == 200
        status, _, data = waiting.result()
    assert status == 200, data
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(_hu()))
    assert state.budget.held == 0 and state.uploads.depth == 0
    # alone, the same header fits the budget: read, it is found truncated
    status, _, data = http_request(server.url, "POST", "/v1/segment", _nifti_header_only(4))
    assert status == 400 and "truncated" in json.loads(data)["error"], data


def test_a_v2_request_over_the_budget_is_503_and_one_over_the_whole_budget_413(server_factory, gate_model):
    budget = 3 * SLICE * 4
    server = server_factory(max_batch=4, max_inflight_bytes=budget)
    entered, release = gate_model(server)
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(2))
            assert entered.wait(30), "the /v2 request never reached the model"
            _assert_busy(*http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(2)), budget)
            status, headers, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(4))
            assert status == 413 and "retry-after" not in headers, (status, data)
            assert f"more than the whole in-flight budget of {budget} bytes" in json.loads(data)["error"]
        finally:
            release.set()
        assert held.result()[0] == 200
    assert http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(2))[0] == 200
    assert server.app.state.budget.held == 0


@pytest.mark.parametrize("path,body", [("/v2/models/edgeseg/infer", _infer_body()), ("/v1/segment", _npy(_hu()))])
def test_a_full_queue_answers_503_with_retry_after(server_factory, gate_model, path, body):
    server = server_factory(max_batch=1, queue_size=1)
    entered, release = gate_model(server)
    state = server.app.state
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
            assert entered.wait(30), "the first request never reached the model"
            queued = pool.submit(http_request, server.url, "POST", path, body)
            _wait_for(lambda: state.models["edgeseg"].batcher.depth + state.uploads.depth == 1,
                      "the second request never reached the queue")
            status, headers, data = http_request(server.url, "POST", path, body)
            assert status == 503 and headers.get("retry-after") == "1", (status, headers, data)
            assert "queue is full" in json.loads(data)["error"]
        finally:
            release.set()
        assert held.result()[0] == 200 and queued.result()[0] == 200


def test_a_budget_below_the_volume_limit_is_refused(serve_bundle, assert_one_line_error):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--port", "1",
                           "--max-volume-bytes", "1000000", "--max-inflight-bytes", "999999"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "--max-inflight-bytes 999999 is below --max-volume-bytes 1000000")


def test_the_default_budget_is_twice_the_volume_limit(server_factory, monkeypatch):
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", "3000000")
    server = server_factory(max_batch=4)
    assert server.app.state.budget.limit == 6000000
    assert re.search(r"edgeseg_inflight_bytes 0\.0", http_request(server.url, "GET", "/metrics")[2].decode())
