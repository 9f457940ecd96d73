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
