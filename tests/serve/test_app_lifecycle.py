"""An app made by ``create_app`` and embedded in another deployment: its threads end with it, and
an upload cut off by a shutdown leaves no file behind."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from tests.serve.http_util import http_request

pytest.importorskip("fastapi")

_WORKERS = ("edgeseg-batcher", "edgeseg-upload")


def _workers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name in _WORKERS and thread.is_alive()]


@pytest.fixture(scope="module")
def segmenter(serve_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    loaded = Segmenter.load(serve_bundle, backend="onnxruntime:fp32")
    yield loaded
    loaded.close()


class _Server:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, with its lifespan, as a deployment runs it."""

    def __init__(self, app, port: int, **config) -> None:
        import uvicorn

        self.app = app
        self.url = f"127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", **config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"


def _infer(url: str, hu: np.ndarray) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "hu", "shape": list(hu.shape), "datatype": "INT16",
                                   "data": hu.ravel().tolist()}]}).encode()
    status, _, payload = http_request(url, "POST", "/v2/models/edgeseg-pipeline/infer", body,
                                      {"Content-Type": "application/json"})
    return status, json.loads(payload)


def test_served_apps_stop_their_threads_at_shutdown(segmenter, free_port):
    from edgeseg.serve.app import ServeConfig, create_app

    before = len(_workers())
    hu = np.full((1, 32, 32), -100, np.int16)
    for _ in range(5):  # an embedding deployment reloading its model
        server = _Server(create_app(segmenter, ServeConfig(max_batch=4)), free_port())
        assert _infer(server.url, hu)[0] == 200
        server.stop()
    assert len(_workers()) == before


def test_closed_apps_leave_no_threads(segmenter):
    from edgeseg.serve.app import ServeConfig, close_app, create_app

    before = len(_workers())
    for _ in range(20):  # made and never served (a test, a mounted app whose lifespan never runs)
        close_app(create_app(segmenter, ServeConfig(max_batch=4)))
    assert len(_workers()) == before


def test_a_closed_app_refuses_requests_at_once(segmenter, free_port, tmp_path):
    from edgeseg.serve.app import ServeConfig, close_app, create_app

    # a long timeout: a request left waiting for a stopped worker would hang, not be answered
    app = create_app(segmenter, ServeConfig(max_batch=4, timeout_s=600, upload_dir=str(tmp_path)))
    server = _Server(app, free_port())
    try:
        close_app(app)
        status, answer = _infer(server.url, np.full((1, 32, 32), -100, np.int16))
        assert status == 503 and "stopped" in answer["error"]
        status, _, payload = http_request(server.url, "POST", "/v1/segment?format=npy", _npy(np.zeros((1, 32, 32), np.int16)))
        assert status == 503 and "stopped" in json.loads(payload)["error"]
    finally:
        server.stop()
    assert list(tmp_path.iterdir()) == []


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_upload_cut_off_by_shutdown_leaves_no_files(segmenter, free_port, tmp_path):
    from edgeseg.serve.app import ServeConfig, create_app

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    app = create_app(segmenter, ServeConfig(upload_dir=str(uploads), timeout_s=600))
    # a short grace period: the request still receiving its body is cancelled when it ends
    server = _Server(app, free_port(), timeout_graceful_shutdown=0.5)
    client = socket.create_connection(("127.0.0.1", int(server.url.split(":")[1])))
    try:
        client.sendall(b"POST /v1/segment?format=npy HTTP/1.1\r\nHost: edgeseg\r\nContent-Length: 1000000\r\n\r\n"
                       + b"\0" * 100_000)
        deadline = time.monotonic() + 30
        while not any(folder.iterdir() for folder in uploads.iterdir()):  # its body is being written
            assert time.monotonic() < deadline, "the upload's body was never written"
            time.sleep(0.02)
        server.stop()
    finally:
        client.close()
    assert list(uploads.iterdir()) == []
    assert app.state.disk.budget.held == 0


def test_requests_waiting_for_the_model_when_the_app_is_closed_are_answered_503_at_once(segmenter, free_port,
                                                                                      gate_model, tmp_path):
    """A /v2 request queued behind a running batch, and an upload waiting for the model, when
    close_app is called: both are refused then (503), not left to their 600 s timeout; the batch
    already running is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeseg.serve.app import ServeConfig, close_app, create_app

    app = create_app(segmenter, ServeConfig(max_batch=1, timeout_s=600, upload_dir=str(tmp_path)))
    server = _Server(app, free_port())
    entered, release = gate_model(server)
    x = np.zeros((1, 1, 64, 64), np.float32)
    body = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()

    def infer():
        return http_request(server.url, "POST", "/v2/models/edgeseg/infer", body, timeout=120)

    def wait_for(condition, what):
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.02)

    try:
        with ThreadPoolExecutor(4) as pool:
            running = pool.submit(infer)
            assert entered.wait(60), "the first request never reached the model"
            queued = pool.submit(infer)
            wait_for(lambda: app.state.models["edgeseg"].batcher.depth == 1, "the second request was never queued")
            upload = pool.submit(http_request, server.url, "POST", "/v1/segment?format=npy",
                                 _npy(np.zeros((1, 32, 32), np.int16)), timeout=120)
            wait_for(lambda: app.state.uploads.queued == 1, "the upload never waited for the model")
            closing = pool.submit(close_app, app)
            try:
                for answer in (queued.result(timeout=60), upload.result(timeout=60)):
                    status, headers, payload = answer
                    assert status == 503 and headers["Retry-After"] == "1", answer
                    assert "stopped before" in json.loads(payload)["error"], payload
            finally:
                release.set()
            assert running.result(timeout=60)[0] == 200
            closing.result(timeout=60)
    finally:
        release.set()
        server.stop()
    assert list(tmp_path.iterdir()) == []
