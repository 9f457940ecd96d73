"""``edgeseg serve --grpc-port``: a real server process, driven over KServe v2 gRPC by
``edgeseg predict --backend grpc://...`` and by ``tritonclient.grpc``. The oracle for the labels
is ``edgeseg predict`` run locally on the same series with the same runtime."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _edgeseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def served(serve_bundle, serve_process):
    """The server on onnxruntime fp32, 2 slices per request (the remote runner splits to fit); its gRPC port."""
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32", "--model-name", "liver",
                            "--max-batch", "2") as (_, _, grpc_port):
        yield grpc_port


@pytest.fixture(scope="module")
def local_labels(serve_bundle, tmp_path_factory) -> np.ndarray:
    folder = tmp_path_factory.mktemp("local")
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "local.npy", "--backend", "onnxruntime:fp32", "--quiet",
                    cwd=folder)
    assert done.returncode == 0, done.stderr
    labels = np.load(folder / "local.npy")
    assert len(np.unique(labels)) > 1, "the model finds nothing on the series: the comparison would be vacuous"
    return labels


def test_grpc_remote_predict_equals_local_predict(served, serve_bundle, local_labels, tmp_path):
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "remote.npy", "--backend",
                    f"grpc://127.0.0.1:{served}/models/liver", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"backend remote:server (127.0.0.1:{served})" in done.stdout
    remote = np.load(tmp_path / "remote.npy")
    assert remote.shape == local_labels.shape == (3, 512, 512)
    assert int(np.count_nonzero(remote != local_labels)) == 0


def test_tritonclient_grpc_segments_with_the_pipeline_model(served, local_labels):
    from edgeseg.data.dicom import read_dicom_series

    client = tritonclient_grpc.InferenceServerClient(url=f"127.0.0.1:{served}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("liver-pipeline") and not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "edgeseg"
    meta = client.get_model_metadata("liver-pipeline")
    assert [t.name for t in meta.inputs] == ["hu", "spacing"] and meta.outputs[0].datatype == "UINT8"
    config = client.get_model_config("liver", as_json=True)["config"]
    assert config["max_batch_size"] == 2 and "artifact_sha256" in config["parameters"]
    hu = read_dicom_series(SERIES).hu.astype(np.int16)
    parts = []
    for start in range(0, len(hu), 2):
        chunk = np.ascontiguousarray(hu[start:start + 2])
        tensor = tritonclient_grpc.InferInput("hu", list(chunk.shape), "INT16")
        tensor.set_data_from_numpy(chunk)
        result = client.infer("liver-pipeline", [tensor], request_id=f"r{start}")
        assert result.get_response().id == f"r{start}"
        assert result.get_response().parameters["classes"].string_param == "background,liver"
        parts.append(result.as_numpy("labels"))
    labels = np.concatenate(parts)
    assert labels.dtype == np.uint8
    assert int(np.count_nonzero(labels != local_labels)) == 0
    stats = client.get_inference_statistics("liver-pipeline", as_json=True)["model_stats"][0]
    assert int(stats["inference_stats"]["success"]["count"]) >= 2


def test_the_network_model_gives_the_logits_of_the_http_route(served, serve_bundle):
    """The same tensor to model ``liver`` over gRPC and over HTTP (tritonclient.http) of the same server."""
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        shape = segmenter.manifest.inputs[0].shape
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (2, *shape[1:])).astype(np.float32)
    client = tritonclient_grpc.InferenceServerClient(url=f"127.0.0.1:{served}")
    tensor = tritonclient_grpc.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    logits = client.infer("liver", [tensor]).as_numpy("logits")
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        expected = segmenter.runner.infer(batch)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_sigterm_stops_the_grpc_service_with_exit_0(serve_bundle, serve_process):
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32") as (proc, _, grpc_port):
        client = tritonclient_grpc.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        assert client.is_server_live()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    with socket.socket() as sock:  # nothing listens on the gRPC port any more
        assert sock.connect_ex(("127.0.0.1", grpc_port)) != 0


def test_grpc_port_refusals_are_one_line(serve_bundle, tmp_path, assert_one_line_error):
    from tests.ports import reserved_port

    port = reserved_port()
    done = _edgeseg("serve", serve_bundle, "--port", port, "--grpc-port", port, cwd=tmp_path)
    assert_one_line_error(done, f"--grpc-port {port} is the HTTP --port")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        done = _edgeseg("serve", serve_bundle, "--port", reserved_port(), "--grpc-port", busy, cwd=tmp_path)
    assert_one_line_error(done, f"cannot listen on 127.0.0.1:{busy}")
