"""A real Triton server over the repository ``edgeseg triton --kind KIND_CPU`` writes: each
Python-backend model's configuration names the bundle it was written from (sha256 of its
manifest.json) and the backend it runs, as a client reads them from the server."""

from __future__ import annotations

import hashlib

import pytest

from edgeseg.cli.main import cli
from edgeseg.serve.triton_launch import pytriton_root
from tests.guarded_cli import GuardedCliRunner

tritonclient_http = pytest.importorskip("tritonclient.http")

pytestmark = pytest.mark.skipif(pytriton_root() is None,
                                reason="tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")

@pytest.fixture(scope="module")
def triton(serve_bundle, tmp_path_factory):
    from edgeseg.serve.triton_launch import TritonServer

    repo = tmp_path_factory.mktemp("triton") / "repo"
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--kind", "KIND_CPU", "--max-batch", "2",
                                             "--backend", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    with TritonServer(repo, start_timeout=240, workdir=repo.parent / "server") as server:
        yield server


def test_triton_models_name_the_bundle_and_backend_they_run(triton, serve_bundle):
    """The models' own copies of the manifest hold one artifact each, so their sha256 is not the
    bundle's: the configuration carries the bundle's, which ``sha256sum BUNDLE/manifest.json``
    gives (Triton's Python backend sends no response parameters before 25.02)."""
    client = tritonclient_http.InferenceServerClient(url=triton.url)
    bundle_sha256 = hashlib.sha256((serve_bundle / "manifest.json").read_bytes()).hexdigest()
    for model in ("edgeseg", "edgeseg-pipeline"):
        params = {k: v["string_value"] for k, v in client.get_model_config(model)["parameters"].items()}
        assert params["edgeseg_manifest_sha256"] == bundle_sha256, model
        assert params["edgeseg_backend"] == "onnxruntime:fp32", model
