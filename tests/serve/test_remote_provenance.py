"""``edgeseg predict --backend http://...`` (and ``grpc://...``): the outputs say which model the
server ran, as the server itself says it (its metadata, or gRPC ModelConfig, and every response's
parameters), checked against sha256 of the bundle's files computed here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _edgeseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["http", "grpc"])
def served(request, serve_bundle, serve_process, tmp_path_factory):
    """``edgeseg serve BUNDLE --backend onnxruntime:int8``: an artifact ``auto`` would not pick
    for a remote client, so the record cannot be right by chance; its model address over HTTP,
    or over gRPC (``--grpc-port``, where the grpc extra is installed)."""
    pytest.importorskip("fastapi")
    from tests.serve.grpc_util import grpc_serve_process

    options = ("--backend", "onnxruntime:int8", "--model-name", "liver")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        if request.param == "http":
            with serve_process(serve_bundle, *options, stderr=out) as (_, port):
                yield f"http://127.0.0.1:{port}/models/liver"
        else:
            pytest.importorskip("grpc")
            pytest.importorskip("tritonclient.grpc")
            with grpc_serve_process(serve_process, serve_bundle, *options, stderr=out) as (_, _, grpc_port):
                yield f"grpc://127.0.0.1:{grpc_port}/models/liver"


def _int8_artifact(bundle: Path) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    [entry] = [a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8"]
    return bundle / entry["file"]


def test_remote_nifti_records_the_servers_model(served, serve_bundle, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "labels.nii.gz", "--backend", served, "--quiet",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(nibabel.load(tmp_path / "labels.nii.gz").header.extensions[0].get_content())
    artifact = _int8_artifact(serve_bundle)
    assert record["backend"] == "remote"
    assert record["server_artifact_sha256"] == _sha256(artifact)
    assert record["server_artifact"] == artifact.name
    assert record["server_manifest_sha256"] == _sha256(serve_bundle / "manifest.json")
    assert (record["server_backend"], record["server_precision"], record["server_device"]) == ("onnxruntime", "int8", "cpu")
    import onnxruntime

    assert record["server_backend_version"] == onnxruntime.__version__


def test_remote_dicom_seg_names_the_servers_model(served, serve_bundle, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "labels.seg.dcm", "--format", "dicom-seg", "--backend",
                    served, "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    segment = pydicom.dcmread(tmp_path / "labels.seg.dcm").SegmentSequence[0]
    [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
    parameters = dict(item.split("=", 1) for item in algorithm.AlgorithmParameters.split(","))
    assert parameters["server_artifact_sha256"] == _sha256(_int8_artifact(serve_bundle))
    assert parameters["server_backend"] == "onnxruntime:int8"


def _fake_server(serve_bundle, metadata_parameters: dict, response_parameters: dict):
    """A real HTTP server on 127.0.0.1 answering the bundle's tensors: zero logits, with the given
    metadata and response parameters; (server, url)."""
    from edgeseg.runtime.manifest import read_manifest
    from tests.serve.http_util import canned_server

    manifest = read_manifest(serve_bundle)
    tensors = [{"name": t.name, "datatype": "FP32", "shape": list(t.shape)} for t in (manifest.inputs[0], manifest.outputs[0])]
    metadata = json.dumps({"name": "m", "inputs": tensors[:1], "outputs": tensors[1:],
                           "parameters": metadata_parameters}).encode()
    out_shape = [1, *manifest.outputs[0].shape[1:]]
    reply = json.dumps({"outputs": [{"name": manifest.outputs[0].name, "datatype": "FP32", "shape": out_shape,
                                     "data": [0.0] * int(np.prod(out_shape))}],
                        "parameters": response_parameters}).encode()

    server = canned_server(metadata, reply)
    return server, f"http://127.0.0.1:{server.server_port}/models/m"


def _runner(serve_bundle, url):
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners.remote import RemoteRunner

    manifest = read_manifest(serve_bundle)
    return RemoteRunner(url, manifest.inputs[0], manifest.outputs[0], manifest.max_batch,
                        artifacts=tuple(a.sha256 for a in manifest.artifacts)), manifest


def test_a_response_from_another_model_than_the_metadata_named_is_refused(serve_bundle):
    """A server swapped to another model after the client loaded: its answers are refused, not
    recorded under this bundle's names."""
    from edgeseg.errors import BackendError

    ours = _sha256(_int8_artifact(serve_bundle))
    server, url = _fake_server(serve_bundle, {"artifact_sha256": ours, "backend": "onnxruntime"},
                               {"artifact_sha256": "f" * 64, "backend": "onnxruntime"})
    try:
        runner, manifest = _runner(serve_bundle, url)
        with runner, pytest.raises(BackendError, match="runs another model"):
            runner.infer(np.zeros((1, *manifest.inputs[0].shape[1:]), np.float32))
    finally:
        server.shutdown()
        server.server_close()


def test_what_a_server_says_it_ran_is_kept_only_when_it_is_short_printable_text(serve_bundle):
    ours = _sha256(_int8_artifact(serve_bundle))
    server, url = _fake_server(serve_bundle, {"artifact_sha256": ours, "backend": "openvino"},
                               {"artifact_sha256": ours, "backend": "tensorrt", "precision": "x" * 500,
                                "device": "cuda:0\nPatient^Name", "backend_version": 10})
    try:
        runner, manifest = _runner(serve_bundle, url)
        with runner:
            assert runner.served == {"artifact_sha256": ours, "backend": "openvino"}
            runner.infer(np.zeros((1, *manifest.inputs[0].shape[1:]), np.float32))
            assert runner.served == {"artifact_sha256": ours, "backend": "tensorrt"}
    finally:
        server.shutdown()
        server.server_close()
