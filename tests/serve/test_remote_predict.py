"""``edgeseg predict --backend http://...`` against a real ``edgeseg serve`` process on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _edgeseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module", params=["onnxruntime:fp32", "openvino:fp32"])
def served(request, serve_bundle, serve_process, tmp_path_factory):
    """``edgeseg serve BUNDLE`` as its own process on each CPU runtime, stopped at teardown; its
    URL. (The remote runner sends binary tensors, which the server reads without copying: on
    OpenVINO that once failed every request.) It takes 2 slices per request, fewer than the
    bundle's batch: the remote runner splits its batches to fit."""
    pytest.importorskip("fastapi")
    from edgeseg.runtime.runners import runner_class

    cls = runner_class(request.param.split(":")[0])
    if not cls.available():
        pytest.skip(f"{cls.name} is not installed ({cls.library} missing: pip install 'edgeseg[{cls.extra}]')")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out, serve_process(serve_bundle, "--backend", request.param, "--model-name", "liver",
                                               "--max-batch", "2", stderr=out) as (_, port):
        yield f"http://127.0.0.1:{port}/models/liver"


def test_remote_predict_equals_local_predict_on_a_dicom_series(served, serve_bundle, tmp_path):
    remote = _edgeseg("predict", serve_bundle, SERIES, "--out", "remote.npy", "--backend", served, "--quiet", cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    assert "backend remote:server (127.0.0.1:" in remote.stdout
    # the same runtime here as behind the server (the two runtimes' float sums differ in the last bits)
    backend = json.loads(urllib.request.urlopen(served.replace("/models/", "/v2/models/"), timeout=10).read())["platform"]
    local = _edgeseg("predict", serve_bundle, SERIES, "--out", "local.npy", "--backend",
                     backend.removeprefix("edgeseg_"), "--quiet", cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    a, b = np.load(tmp_path / "remote.npy"), np.load(tmp_path / "local.npy")
    assert a.shape == b.shape == (3, 512, 512)
    assert int(np.count_nonzero(a != b)) == 0
    assert len(np.unique(b)) > 1, "the model finds nothing on the series: the comparison would be vacuous"


def test_remote_predict_refuses_a_server_running_another_model(served, serve_bundle, tmp_path, assert_one_line_error):
    refuses_another_model(served, serve_bundle, tmp_path, assert_one_line_error)


def refuses_another_model(backend: str, bundle: Path, tmp_path: Path, assert_one_line_error) -> None:
    """Same tensors, another model: a bundle whose artifacts are not the one the server at
    ``backend`` runs (as if exported from another checkpoint), or whose classes are named
    otherwise, is refused rather than given the server's masks under its own names."""
    import shutil

    other = Path(shutil.copytree(bundle, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        entry["sha256"] = "0" * 64  # unused by a remote predict: the network runs on the server
    (other / "manifest.json").write_text(json.dumps(manifest))
    done = _edgeseg("predict", other, SERIES, "--out", "x.npy", "--backend", backend, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "runs another model (artifact sha256")
    renamed = Path(shutil.copytree(bundle, tmp_path / "renamed"))
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["labels"] = {"0": "background", "1": "spleen"}
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    done = _edgeseg("predict", renamed, SERIES, "--out", "x.npy", "--backend", backend, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "names its classes")
    assert not (tmp_path / "x.npy").exists()


def test_remote_runner_checks_the_served_model_against_the_bundle(served, serve_bundle, tmp_path):
    from edgeseg.errors import BackendError
    from edgeseg.runtime.manifest import TensorInfo, read_manifest
    from edgeseg.runtime.runners.remote import RemoteRunner

    manifest = read_manifest(serve_bundle)
    other = TensorInfo("image", (-1, 1, 32, 32))
    with pytest.raises(BackendError, match="the bundle needs image float"):
        RemoteRunner(served, other, manifest.outputs[0], 4)
    with pytest.raises(BackendError, match="unknown model 'nope'"):
        RemoteRunner(served.replace("/liver", "/nope"), manifest.inputs[0], manifest.outputs[0], 4)


@pytest.mark.parametrize(("backend", "fragment"), [
    ("http://127.0.0.1:9/v1/segment", "must look like http://HOST:PORT/models/NAME"),
    ("http://127.0.0.1:9/models/liver", "cannot reach http://127.0.0.1:9"),
    ("grpc://127.0.0.1:9/v1/segment", "must look like http://HOST:PORT/models/NAME or grpc://"),
    ("grpc://127.0.0.1/models/liver", "must look like http://HOST:PORT/models/NAME or grpc://"),  # gRPC has no usual port
    pytest.param("grpc://127.0.0.1:9/models/liver", "cannot reach grpc://127.0.0.1:9", marks=pytest.mark.skipif(
        importlib.util.find_spec("grpc") is None, reason="grpc:// needs edgeseg[grpc]")),
])
def test_bad_remote_address_is_one_line(serve_bundle, tmp_path, backend, fragment, assert_one_line_error):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg("predict", serve_bundle, "in.npy", "--out", "out.npy", "--backend", backend, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("reply", [
    b"[" * 100000,                                                          # nested past the parser
    b'{"outputs": 7}',                                                      # not a list
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, 64, 64], "parameters": []}]}',
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, 64, 64], "data": [1, 2]}]}',
    # fractional or text sizes were taken as int() made them, so this answer was decoded
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, 64.5, 64], "data": [' + b"0," * 8191 + b'0]}]}',
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, "64", 64], "data": [' + b"0," * 8191 + b'0]}]}',
    # NaN logits reached post-processing, whose error blamed the input rather than the server
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, 64, 64], "data": [NaN,' + b"0," * 8190 + b'0]}]}',
    b'{"outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 2, 64, 64], "data": [' + b"0," * 8191 + b'Infinity]}]}',
])
def test_a_malformed_server_response_is_a_backend_error(serve_bundle, reply):
    """A real HTTP server on 127.0.0.1 that answers the metadata correctly and inference with junk."""
    from edgeseg.errors import BackendError
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners.remote import RemoteRunner
    from tests.serve.http_util import canned_server

    manifest = read_manifest(serve_bundle)
    tensors = [{"name": t.name, "datatype": "FP32", "shape": list(t.shape)} for t in (manifest.inputs[0], manifest.outputs[0])]
    server = canned_server(json.dumps({"name": "junk", "inputs": tensors[:1], "outputs": tensors[1:]}).encode(), reply)
    try:
        with RemoteRunner(f"http://127.0.0.1:{server.server_port}/models/junk", manifest.inputs[0],
                          manifest.outputs[0], manifest.max_batch) as runner:
            with pytest.raises(BackendError, match="remote"):
                runner.infer(np.zeros((1, *manifest.inputs[0].shape[1:]), np.float32))
    finally:
        server.shutdown()
        server.server_close()
