"""Start a real Triton Inference Server (the ``tritonserver`` shipped in the nvidia-pytriton
wheel) on 127.0.0.1 over a model repository, for tests and load measurements.

The wheel carries the server, its shared libraries (``nvidia_pytriton.libs``) and the Python
backend with one stub per Python version; the stub for the running Python is copied into a
backend folder of our own. ``PYTHONPATH`` passes this process's import path to the stubs,
whose own Python does not see the environment. Metrics stay off, and gRPC unless asked for
(``grpc=True``: its port, ``grpc_url``, on 127.0.0.1 too); the ports are free at start. The
server is killed at ``stop()`` if it does not exit within ``stop_timeout``.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeseg.errors import DataError


def pytriton_root() -> Path | None:
    """The installed ``pytriton`` package folder, or None when the wheel is missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def triton_binary() -> tuple[Path, Path, Path]:
    """(tritonserver, its library folder, the Python backend stub for this Python), or DataError."""
    root = pytriton_root()
    if root is None:
        raise DataError("tritonserver needs the nvidia-pytriton wheel: pip install nvidia-pytriton")
    binary = root / "tritonserver" / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    stub = root / "tritonserver" / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" / \
        "triton_python_backend_stub"
    for path in (binary, libs, stub):
        if not path.exists():
            raise DataError(f"the nvidia-pytriton wheel lacks {path}")
    return binary, libs, stub


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TritonServer:
    """``tritonserver`` over ``repo`` on 127.0.0.1; a context manager; ``url`` is host:port (HTTP),
    ``grpc_url`` the gRPC one where ``grpc`` turns it on (None otherwise)."""

    def __init__(self, repo: str | Path, *, start_timeout: float = 180.0, stop_timeout: float = 30.0,
                 workdir: str | Path | None = None, grpc: bool = False) -> None:
        # absolute: the server runs in the work folder, where relative paths would mean other places
        self.repo = Path(repo).absolute()
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.port = _free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.grpc_port = _free_port() if grpc else None
        self.grpc_url = None if self.grpc_port is None else f"127.0.0.1:{self.grpc_port}"
        # the backend folder and the log; a folder made here is removed at stop()
        self._owned = workdir is None
        self._tmp = Path(tempfile.mkdtemp(prefix="edgeseg-triton-") if workdir is None else workdir).absolute()
        self._tmp.mkdir(parents=True, exist_ok=True)
        self.log_path = self._tmp / "tritonserver.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "TritonServer":
        """Launch the server and wait until every model is ready; DataError with the log's tail otherwise."""
        binary, libs, stub = triton_binary()
        backends = self._tmp / "backends" / "python"
        shutil.copytree(binary.parents[1] / "backends" / "python", backends, dirs_exist_ok=True)
        shutil.copy2(stub, backends / stub.name)
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")])),
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p and Path(p).is_dir()))
        cmd = [str(binary), "--model-repository", str(self.repo), "--backend-directory", str(self._tmp / "backends"),
               "--http-address", "127.0.0.1", "--http-port", str(self.port),
               *(["--allow-grpc", "false"] if self.grpc_port is None else
                 ["--allow-grpc", "true", "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port)]),
               "--allow-metrics", "false", "--exit-on-error", "true", "--strict-readiness", "true",
               # stop within seconds of SIGTERM (the default waits 30 s for in-flight requests)
               "--exit-timeout-secs", "5"]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self._tmp)
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise DataError(f"tritonserver did not become ready within {self.start_timeout:g} s: {tail}")
            time.sleep(0.25)
        return self

    def _ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            status = conn.getresponse().status
            conn.close()
            return status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the server (kill it after ``stop_timeout``); remove its backend folder, and
        the whole work folder if this object made it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self._tmp / "backends", ignore_errors=True)
        if self._owned:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
