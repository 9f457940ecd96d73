"""The remote runner over gRPC (``--backend grpc://HOST:PORT/models/NAME``) keeps the guarantees
of ``http://``: the served model is checked against the bundle (tensors, model file, classes), a
silent server times out, and every failure is one line. (What the outputs record of the server's
model: test_remote_provenance.py, over both; bad addresses: test_remote_predict.py.)"""

from __future__ import annotations

import pytest

from tests.serve.grpc_util import grpc_serve_process
from tests.serve.test_remote_predict import refuses_another_model
from tests.serve.test_remote_provenance import SERIES, _edgeseg

pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def served(serve_bundle, serve_process):
    """``edgeseg serve --backend onnxruntime:int8 --grpc-port P``; its gRPC model address."""
    pytest.importorskip("fastapi")
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:int8",
                            "--model-name", "liver") as (_, _, grpc_port):
        yield f"grpc://127.0.0.1:{grpc_port}/models/liver"


def test_a_grpc_server_running_another_model_is_refused(served, serve_bundle, tmp_path, assert_one_line_error):
    refuses_another_model(served, serve_bundle, tmp_path, assert_one_line_error)


def test_the_grpc_runner_checks_the_served_tensors_and_model_name(served, serve_bundle):
    from edgeseg.errors import BackendError
    from edgeseg.runtime.manifest import TensorInfo, read_manifest
    from edgeseg.runtime.runners.remote import remote_runner

    manifest = read_manifest(serve_bundle)
    with pytest.raises(BackendError, match="the bundle needs image float"):
        remote_runner(served, TensorInfo("image", (-1, 1, 32, 32)), manifest.outputs[0], 4)
    with pytest.raises(BackendError, match="gRPC NOT_FOUND: unknown model 'nope'"):
        remote_runner(served.replace("/liver", "/nope"), manifest.inputs[0], manifest.outputs[0], 4)


def test_a_silent_grpc_server_times_out_in_one_line(serve_bundle, silent_port, tmp_path, assert_one_line_error):
    """A server that takes the connection and never answers (not even gRPC's handshake)."""
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "mask.npy", "--backend",
                    f"grpc://127.0.0.1:{silent_port}/models/edgeseg",
                    "--timeout", "0.5", "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "no answer within 0.5 s (the remote backend's timeout)")
    assert not (tmp_path / "mask.npy").exists()


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_the_grpc_runner_reaches_an_ipv6_server(serve_bundle):
    """``grpc://[::1]:PORT/models/NAME``: the host goes to gRPC in its brackets."""
    import socket
    import subprocess
    import sys
    import time

    import numpy as np

    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners.remote import remote_runner
    from tests.ports import reserved_port

    port, grpc_port = reserved_port(), reserved_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--host", "::1",
                             "--port", str(port), "--grpc-port", str(grpc_port), "--backend", "onnxruntime:fp32"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket(socket.AF_INET6) as sock:
                if sock.connect_ex(("::1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1] if proc.poll() else ""
            time.sleep(0.2)
        manifest = read_manifest(serve_bundle)
        runner = remote_runner(f"grpc://[::1]:{grpc_port}/models/edgeseg", manifest.inputs[0], manifest.outputs[0],
                               manifest.max_batch, artifacts=tuple(a.sha256 for a in manifest.artifacts),
                               labels=manifest.labels)
        batch = np.zeros((2, *manifest.inputs[0].shape[1:]), np.float32)
        assert runner.infer(batch).shape[0] == 2
        runner.close()
    finally:
        proc.kill()
        proc.wait()
