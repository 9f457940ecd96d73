"""``edgeseg predict --backend http://...`` against a real ``edgeseg serve`` process on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _edgeseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def served(serve_bundle, tmp_path_factory):
    """``edgeseg serve BUNDLE`` as its own process (ONNX Runtime FP32), stopped at teardown."""
    pytest.importorskip("fastapi")
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--port", str(port),
                                 "--backend", "onnxruntime:fp32", "--model-name", "liver"], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgeseg serve did not start: {log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/models/liver"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_predict_equals_local_predict_on_a_dicom_series(served, serve_bundle, tmp_path):
    remote = _edgeseg("predict", serve_bundle, SERIES, "--out", "remote.npy", "--backend", served, "--quiet", cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    assert "backend remote:server (127.0.0.1:" in remote.stdout
    local = _edgeseg("predict", serve_bundle, SERIES, "--out", "local.npy", "--backend", "onnxruntime:fp32", "--quiet",
                     cwd=tmp_path)
    assert local.returncode == 0, local.stderr
    a, b = np.load(tmp_path / "remote.npy"), np.load(tmp_path / "local.npy")
    assert a.shape == b.shape == (3, 512, 512)
    assert int(np.count_nonzero(a != b)) == 0
    assert len(np.unique(b)) > 1, "the model finds nothing on the series: the comparison would be vacuous"


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
])
def test_bad_remote_address_is_one_line(serve_bundle, tmp_path, backend, fragment, assert_one_line_error):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg("predict", serve_bundle, "in.npy", "--out", "out.npy", "--backend", backend, "--quiet", cwd=tmp_path)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out.npy").exists()
