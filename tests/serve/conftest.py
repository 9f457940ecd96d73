"""Serve fixtures: the exported test bundle, and a real uvicorn server on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.ports import reserved_port
from tests.serve.dcmtk_path import dcmtk_first
from tests.serve.http_util import wait_ready


@pytest.fixture(scope="module", autouse=True)
def _dcmtk_first_on_path():
    """dcmtk's tools first on PATH while a serve test module runs them, never pynetdicom's apps;
    PATH is put back after the module (a test worker runs other folders' tests after it). Module
    scope: tests/ holds no packages, and a "package" fixture here would last the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", dcmtk_first(os.environ.get("PATH", "")))
        yield


@pytest.fixture(scope="session")
def serve_bundle(exported_bundle) -> Path:
    return exported_bundle


@pytest.fixture
def free_port():
    """A function returning a TCP port on 127.0.0.1 held back for the server a test starts (``tests.ports``)."""
    return reserved_port


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def silent_port():
    """A real TCP server on 127.0.0.1 that accepts every connection, reads, and never answers; its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


@pytest.fixture
def wait_port():
    """A function waiting (up to ``timeout`` s) until something listens on a 127.0.0.1 port."""
    return _wait_port


class RunningServer:
    """uvicorn serving an app in a background thread, stopped at teardown."""

    def __init__(self, app, host: str = "127.0.0.1") -> None:
        import uvicorn

        self.app = app
        self.port = reserved_port()
        self.url = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_factory(serve_bundle):
    pytest.importorskip("fastapi")
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.app import ServeConfig, create_app

    started: list[RunningServer] = []

    def start(backend: str = "onnxruntime:fp32", audit=None, host: str = "127.0.0.1", **limits) -> RunningServer:
        segmenter = Segmenter.load(serve_bundle, backend=backend)
        server = RunningServer(create_app(segmenter, ServeConfig(**limits), audit), host)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(server_factory) -> RunningServer:
    return server_factory(max_batch=4, max_body_bytes=4 << 20)


@contextlib.contextmanager
def _serve_process(bundle, *options: str, stderr=subprocess.PIPE):
    """`edgeseg serve BUNDLE OPTIONS` as its own process on a free port, yielded (process, port)
    once /v2/health/ready answers 200; killed at the end if still running."""
    port = reserved_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(bundle), "--port", str(port), *options],
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        wait_ready(proc, port)
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def serve_process():
    """The context manager above: ``with serve_process(bundle, "--backend", ...) as (proc, port)``."""
    return _serve_process


def _gate_model(server):
    """Hold the network model's call (and so the model lock) of ``server`` until the returned
    ``release`` event is set; ``entered`` is set when a batch reaches the model. Which request
    is where then does not depend on how fast the machine runs the model."""
    batcher = server.app.state.models["edgeseg"].batcher
    real_infer, entered, release = batcher._infer, threading.Event(), threading.Event()

    def gated(batch):
        entered.set()
        assert release.wait(30), "the test never opened the gate"
        return real_infer(batch)

    batcher._infer = gated
    return entered, release


@pytest.fixture
def gate_model():
    """``gate_model(server) -> (entered, release)``: see :func:`_gate_model`."""
    return _gate_model
