"""/v1/segment shares the model with /v2 as a /v2 request does, on a real server on 127.0.0.1:
it holds the model only for the model call, waits at most --timeout (504) in a queue of at most
--queue-size (503)."""

from __future__ import annotations

import http.client
import io
import json
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi")


def _request(url, method, path, body=None, timeout=60):
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request(method, path, body=body)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def _npy(hu: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, hu)
    return buffer.getvalue()


def _hu() -> np.ndarray:
    hu = np.full((1, 64, 64), -1000, np.int16)
    hu[:, 16:48, 12:52] = 50
    return hu


def _slow_nifti() -> bytes:
    """A gzip NIfTI of two 64x64 slices whose voxels start 1 GiB into the stream (the header's
    vox_offset; zeros before them): a small upload that takes long to read, since the whole
    GiB is decompressed to reach the voxels, and little time to segment."""
    nib = pytest.importorskip("nibabel")
    hu = np.full((64, 64, 2), -1000, np.int16)
    hu[16:48, 12:52] = 50
    header = nib.Nifti1Header()
    header.set_data_shape(hu.shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 1 << 30
    stream = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip
    parts = [stream.compress(header.binaryblock)]
    zeros = bytes(1 << 24)
    left = (1 << 30) - len(header.binaryblock)
    while left:
        parts.append(stream.compress(zeros[:min(left, len(zeros))]))
        left -= min(left, len(zeros))
    parts += [stream.compress(hu.tobytes(order="F")), stream.flush()]
    return b"".join(parts)


def _gate(server):
    """Hold the network model's call (and so the model lock) until the returned event is set."""
    batcher = server.app.state.models["edgeseg"].batcher
    real_infer, entered, release = batcher._infer, threading.Event(), threading.Event()

    def gated(batch):
        entered.set()
        assert release.wait(30), "the test never opened the gate"
        return real_infer(batch)

    batcher._infer = gated
    return entered, release


def _infer_body() -> bytes:
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def test_v2_requests_during_an_upload_do_not_wait_for_its_reading(server_factory, serve_bundle, tmp_path):
    """/v2 requests sent one after another while a slow-to-read upload is in the server: none
    waits for the reading. Held for the whole upload, as before, the model made one of them
    wait about as long as the upload took."""
    server = server_factory(max_batch=4)
    body = _slow_nifti()
    infer = _infer_body()
    host, port = server.url.split(":")
    upload = http.client.HTTPConnection(host, int(port), timeout=120)
    started = time.perf_counter()
    upload.request("POST", "/v1/segment?format=npy", body=body)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: (lambda r: (r.status, r.read()))(upload.getresponse()))
        latencies = []
        while not answer.done():
            sent = time.perf_counter()
            assert _request(server.url, "POST", "/v2/models/edgeseg/infer", infer)[0] == 200
            latencies.append(time.perf_counter() - sent)
        status, data = answer.result()
    took = time.perf_counter() - started
    upload.close()
    assert status == 200, data
    from edgeseg.runtime.readers import read_input
    from edgeseg.runtime.segmenter import Segmenter

    (tmp_path / "slow.nii.gz").write_bytes(body)
    volume, _ = read_input(tmp_path / "slow.nii.gz")  # the path of edgeseg predict
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(volume))
    assert len(latencies) >= 2 and max(latencies) < took / 2, (max(latencies), took, len(latencies))


def test_an_upload_waiting_longer_than_the_timeout_is_504(server_factory):
    server = server_factory(max_batch=4, timeout_s=0.5)
    entered, release = _gate(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
            assert entered.wait(30), "the /v2 request never reached the model"
            upload = pool.submit(_request, server.url, "POST", "/v1/segment", _npy(_hu()))
            status, data = upload.result(timeout=20)
            assert status == 504, data
            assert json.loads(data) == {"error": "inference did not finish within 0.5 s"}
        finally:
            release.set()
        assert held.result()[0] == 504  # held in the model past the timeout too
    status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
    assert status == 200, data
    deadline = time.monotonic() + 30
    while server.app.state.uploads.depth:  # the upload that timed out leaves the queue unrun
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_uploads_beyond_the_queue_size_are_503(server_factory, serve_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    server = server_factory(max_batch=4, queue_size=1)
    entered, release = _gate(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
            assert entered.wait(30), "the /v2 request never reached the model"
            waiting = pool.submit(_request, server.url, "POST", "/v1/segment", _npy(_hu()))
            deadline = time.monotonic() + 30
            while server.app.state.uploads.depth < 1:  # the first upload holds the only place
                assert time.monotonic() < deadline, "the first upload never reached the queue"
                time.sleep(0.005)
            status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
            assert status == 503, data
            assert "upload queue is full (1 waiting)" in json.loads(data)["error"]
            metrics = _request(server.url, "GET", "/metrics")[1].decode()
            assert "edgeseg_queue_depth 1.0" in metrics
        finally:
            release.set()
        assert held.result()[0] == 200
        status, data = waiting.result()
    assert status == 200, data
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(_hu()))


@pytest.mark.parametrize("query,fragment", [
    ("?format=png", "PNG output holds one slice; the upload has 2"), ("?format=jpg", "format must be one of"),
])
def test_an_upload_the_server_cannot_answer_is_refused_without_waiting_for_the_model(server_factory, query,
                                                                                  fragment):
    server = server_factory(max_batch=4)
    entered, release = _gate(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = pool.submit(_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
            assert entered.wait(30), "the /v2 request never reached the model"
            two_slices = np.concatenate([_hu(), _hu()])
            refused = pool.submit(_request, server.url, "POST", "/v1/segment" + query, _npy(two_slices))
            status, data = refused.result(timeout=20)  # answered while the model is still held
            assert status == 400 and fragment in json.loads(data)["error"], data
        finally:
            release.set()
        assert held.result()[0] == 200
