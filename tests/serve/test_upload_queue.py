"""/v1/segment shares the model with /v2, on a real server on 127.0.0.1: it holds the model only
for the model call, waits at most --timeout (504) for the model to start on it, in a queue of at
most --queue-size uploads (503) that it joins before it is read."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tests.serve.http_util import http_request

pytest.importorskip("fastapi")


def _request(url, method, path, body=None, timeout=60):
    status, _, data = http_request(url, method, path, body, timeout=timeout)
    return status, data


def _npy(hu: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, hu)
    return buffer.getvalue()


def _hu() -> np.ndarray:
    hu = np.full((1, 64, 64), -1000, np.int16)
    hu[:, 16:48, 12:52] = 50
    return hu


def _hold_reading(monkeypatch):
    """Hold every upload's reading open until the returned ``release`` is set; ``reads`` lists
    the readings begun (an upload refused before it is read never appears there)."""
    import edgeseg.serve.segment_route as route_module

    reads, release, real_read = [], threading.Event(), route_module.read_upload

    def held_read(*args):
        reads.append(1)
        assert release.wait(60), "the test never let the reading finish"
        return real_read(*args)

    monkeypatch.setattr(route_module, "read_upload", held_read)
    return reads, release


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _infer_body() -> bytes:
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()

def _hold_the_model(server, entered, pool):
    """Submit to ``pool`` a /v2 request that sits in the gated model (``gate_model``) until its
    gate is released; returns its future once it is inside."""
    held = pool.submit(_request, server.url, "POST", "/v2/models/edgeseg/infer", _infer_body())
    assert entered.wait(30), "the /v2 request never reached the model"
    return held



def test_v2_requests_during_an_upload_do_not_wait_for_its_reading(server_factory, serve_bundle, monkeypatch):
    """/v2 requests answered while an upload is being read (its reading held open by the test):
    held for the whole upload, as before, the model made them wait until the reading ended."""
    server = server_factory(max_batch=4)
    reads, release = _hold_reading(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        try:
            upload = pool.submit(_request, server.url, "POST", "/v1/segment?format=npy", _npy(_hu()))
            _wait_for(lambda: reads, "the upload was never read")
            for _ in range(3):
                assert _request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(), timeout=20)[0] == 200
            assert not upload.done()  # answered while the upload was still being read
        finally:
            release.set()
        status, data = upload.result(timeout=60)
    assert status == 200, data
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(_hu()))


def test_an_upload_whose_model_call_outlasts_the_timeout_is_answered(server_factory, serve_bundle, monkeypatch):
    """--timeout bounds the wait for the model; a whole volume's call, once started, runs to its
    end (it cannot be stopped part-way) and is answered."""
    from edgeseg.runtime.segmenter import Segmenter

    server = server_factory(max_batch=4, timeout_s=0.2)
    real = Segmenter.predict_volume

    def slow(self, *args, **kwargs):
        time.sleep(1.0)  # five times the timeout
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "predict_volume", slow)
    status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
    assert status == 200, data
    monkeypatch.setattr(Segmenter, "predict_volume", real)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(_hu()))


def test_an_upload_waiting_longer_than_the_timeout_is_504(server_factory, gate_model):
    server = server_factory(max_batch=4, timeout_s=0.5)
    entered, release = gate_model(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = _hold_the_model(server, entered, pool)
            upload = pool.submit(_request, server.url, "POST", "/v1/segment", _npy(_hu()))
            status, data = upload.result(timeout=20)
            assert status == 504, data
            assert json.loads(data) == {"error": "the model did not start on the upload within 0.5 s"}
        finally:
            release.set()
        assert held.result()[0] == 504  # held in the model past the timeout too
    status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
    assert status == 200, data
    deadline = time.monotonic() + 30
    while server.app.state.uploads.depth:  # the upload that timed out leaves the queue unrun
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_uploads_beyond_the_queue_size_are_503(server_factory, serve_bundle, gate_model):
    from edgeseg.runtime.segmenter import Segmenter

    server = server_factory(max_batch=4, queue_size=1)
    entered, release = gate_model(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = _hold_the_model(server, entered, pool)
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
def test_an_upload_the_server_cannot_answer_is_refused_without_waiting_for_the_model(server_factory, gate_model, query,
                                                                                  fragment):
    server = server_factory(max_batch=4)
    entered, release = gate_model(server)
    with ThreadPoolExecutor(2) as pool:
        try:
            held = _hold_the_model(server, entered, pool)
            two_slices = np.concatenate([_hu(), _hu()])
            refused = pool.submit(_request, server.url, "POST", "/v1/segment" + query, _npy(two_slices))
            status, data = refused.result(timeout=20)  # answered while the model is still held
            assert status == 400 and fragment in json.loads(data)["error"], data
        finally:
            release.set()
        assert held.result()[0] == 200


def test_an_upload_takes_its_place_in_the_queue_before_it_is_read(server_factory, monkeypatch):
    """So that no more than --queue-size decoded volumes wait: with the only place taken by an
    upload being read, the next is refused before its body is decoded."""
    server = server_factory(max_batch=4, queue_size=1)
    reads, release = _hold_reading(monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        try:
            first = pool.submit(_request, server.url, "POST", "/v1/segment", _npy(_hu()))
            _wait_for(lambda: reads, "the first upload was never read")
            status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()), timeout=20)
            assert status == 503 and "upload queue is full (1 waiting)" in json.loads(data)["error"], data
            assert len(reads) == 1  # the refused upload was not read
        finally:
            release.set()
        assert first.result(timeout=60)[0] == 200
    assert server.app.state.uploads.depth == 0


def test_a_temporary_folder_that_cannot_be_made_gives_the_queue_place_back(server_factory, serve_bundle, tmp_path,
                                                                         monkeypatch):
    """The temporary folder's place is a regular file (as a TMPDIR gone bad): each upload fails
    with 500, and gives back its place in the queue, so uploads are served again once the
    folder can be made, not refused with 503 for good."""
    import tempfile

    from edgeseg.runtime.segmenter import Segmenter

    server = server_factory(max_batch=4, queue_size=2)
    not_a_folder = tmp_path / "tmp"
    not_a_folder.write_bytes(b"")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    for _ in range(3):  # more than the queue's places
        status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
        assert status == 500 and json.loads(data)["error"].startswith("internal server error"), data
    assert server.app.state.uploads.depth == 0
    (tmp_path / "ok").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "ok"))
    status, data = _request(server.url, "POST", "/v1/segment", _npy(_hu()))
    assert status == 200, data
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(_hu()))
    assert list((tmp_path / "ok").iterdir()) == []  # the upload's folder was removed
