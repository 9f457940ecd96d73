"""The remote runner against a real Triton server with gRPC on (nvidia-pytriton's tritonserver
over the repository ``edgeseg triton --kind KIND_CPU`` writes): ``edgeseg predict --backend
grpc://...`` gives the labels of a local ``edgeseg predict``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli.main import cli
from edgeseg.serve.triton_launch import pytriton_root
from tests.guarded_cli import GuardedCliRunner

pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")
pytestmark = pytest.mark.skipif(pytriton_root() is None,
                                reason="tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


@pytest.fixture(scope="module")
def triton(serve_bundle, tmp_path_factory):
    """Triton with a batch limit of 2 slices (the runner must read it from ModelConfig and split)."""
    from edgeseg.serve.triton_launch import TritonServer

    repo = tmp_path_factory.mktemp("triton") / "repo"
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--kind", "KIND_CPU",
                                             "--max-batch", "2"])
    assert result.exit_code == 0, result.output
    with TritonServer(repo, start_timeout=240, workdir=repo.parent / "server", grpc=True) as server:
        yield server


def _predict(bundle, backend, out: Path) -> np.ndarray:
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bundle), str(SERIES), "--out", str(out),
                           "--backend", backend, "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return np.load(out)


def test_grpc_remote_predict_on_triton_equals_local_predict(triton, serve_bundle, tmp_path):
    remote = _predict(serve_bundle, f"grpc://{triton.grpc_url}/models/edgeseg", tmp_path / "remote.npy")
    local = _predict(serve_bundle, "onnxruntime:fp32", tmp_path / "local.npy")
    assert remote.shape == local.shape == (3, 512, 512)
    assert int(np.count_nonzero(remote != local)) == 0
    assert len(np.unique(local)) > 1, "the model finds nothing on the series: the comparison would be vacuous"


def test_an_unknown_model_on_triton_is_one_line(triton, serve_bundle, tmp_path, assert_one_line_error):
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(serve_bundle), str(SERIES), "--out",
                           str(tmp_path / "x.npy"), "--backend", f"grpc://{triton.grpc_url}/models/nope", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "gRPC")
    assert not (tmp_path / "x.npy").exists()
