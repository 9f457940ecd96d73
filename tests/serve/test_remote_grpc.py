"""The remote runner over gRPC (``--backend grpc://HOST:PORT/models/NAME``) keeps the guarantees
of ``http://``: the served model is checked against the bundle (tensors, model file, classes),
the outputs record what the server ran, a silent server times out, and every failure is one line."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process

pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _edgeseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(serve_bundle, serve_process):
    """``edgeseg serve --backend onnxruntime:int8`` (an artifact a remote client's ``auto`` would
    not pick, so the record cannot be right by chance); its gRPC model address."""
    pytest.importorskip("fastapi")
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:int8",
                            "--model-name", "liver") as (_, _, grpc_port):
        yield f"grpc://127.0.0.1:{grpc_port}/models/liver"


def test_the_nifti_records_the_model_the_grpc_server_ran(served, serve_bundle, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "labels.nii.gz", "--backend", served, "--quiet",
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(nibabel.load(tmp_path / "labels.nii.gz").header.extensions[0].get_content())
    manifest = json.loads((serve_bundle / "manifest.json").read_text())
    [entry] = [a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "int8"]
    assert record["backend"] == "remote"
    assert record["server_artifact_sha256"] == _sha256(serve_bundle / entry["file"])
    assert record["server_manifest_sha256"] == _sha256(serve_bundle / "manifest.json")
    assert (record["server_backend"], record["server_precision"]) == ("onnxruntime", "int8")


def test_a_grpc_server_running_another_model_is_refused(served, serve_bundle, tmp_path, assert_one_line_error):
    other = Path(shutil.copytree(serve_bundle, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        entry["sha256"] = "0" * 64  # unused by a remote predict: the network runs on the server
    (other / "manifest.json").write_text(json.dumps(manifest))
    done = _edgeseg("predict", other, SERIES, "--out", "x.npy", "--backend", served, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "runs another model (artifact sha256")
    renamed = Path(shutil.copytree(serve_bundle, tmp_path / "renamed"))
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["labels"] = {"0": "background", "1": "spleen"}
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    done = _edgeseg("predict", renamed, SERIES, "--out", "x.npy", "--backend", served, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "names its classes")
    assert not (tmp_path / "x.npy").exists()


def test_the_grpc_runner_checks_the_served_tensors_and_model_name(served, serve_bundle):
    from edgeseg.errors import BackendError
    from edgeseg.runtime.manifest import TensorInfo, read_manifest
    from edgeseg.runtime.runners.remote import remote_runner

    manifest = read_manifest(serve_bundle)
    with pytest.raises(BackendError, match="the bundle needs image float"):
        remote_runner(served, TensorInfo("image", (-1, 1, 32, 32)), manifest.outputs[0], 4)
    with pytest.raises(BackendError, match="gRPC NOT_FOUND: unknown model 'nope'"):
        remote_runner(served.replace("/liver", "/nope"), manifest.inputs[0], manifest.outputs[0], 4)


@pytest.mark.parametrize(("backend", "fragment"), [
    ("grpc://127.0.0.1:9/v1/segment", "must look like http://HOST:PORT/models/NAME or grpc://"),
    ("grpc://127.0.0.1/models/liver", "must look like http://HOST:PORT/models/NAME or grpc://"),
    ("grpc://127.0.0.1:9/models/liver", "cannot reach grpc://127.0.0.1:9"),
])
def test_a_bad_grpc_address_is_one_line(serve_bundle, tmp_path, backend, fragment, assert_one_line_error):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg("predict", serve_bundle, "in.npy", "--out", "out.npy", "--backend", backend, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out.npy").exists()


@pytest.fixture
def silent_server():
    """A real TCP server on 127.0.0.1 that accepts every connection and never answers; its address."""
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
    yield f"grpc://127.0.0.1:{listener.getsockname()[1]}/models/edgeseg"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_silent_grpc_server_times_out_in_one_line(serve_bundle, silent_server, tmp_path, assert_one_line_error):
    done = _edgeseg("predict", serve_bundle, SERIES, "--out", "mask.npy", "--backend", silent_server,
                    "--timeout", "0.5", "--quiet", cwd=tmp_path)
    assert_one_line_error(done, "no answer within 0.5 s (the remote backend's timeout)")
    assert not (tmp_path / "mask.npy").exists()
