"""A real Triton server (nvidia-pytriton's tritonserver, Python backend) over the repository
``edgeseg triton --kind KIND_CPU`` writes, and ``edgeseg serve``, driven by one tritonclient script.

The oracle for the labels is ``edgeseg predict`` on the same DICOM series (its NPY output).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli.main import cli
from edgeseg.serve.triton_launch import pytriton_root
from tests.guarded_cli import GuardedCliRunner

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (present with tritonclient)

pytestmark = pytest.mark.skipif(pytriton_root() is None,
                                reason="tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
MAX_SLICES = 4


def segment_with_tritonclient(url: str, hu: np.ndarray, model: str = "edgeseg-pipeline") -> np.ndarray:
    """The client script: INT16 HU (N, H, W) to ``model`` in requests of at most MAX_SLICES slices."""
    client = tritonclient_http.InferenceServerClient(url=url, network_timeout=120)
    parts = []
    for start in range(0, len(hu), MAX_SLICES):
        chunk = np.ascontiguousarray(hu[start:start + MAX_SLICES], dtype=np.int16)
        tensor = tritonclient_http.InferInput("hu", list(chunk.shape), "INT16")
        tensor.set_data_from_numpy(chunk, binary_data=True)
        wanted = tritonclient_http.InferRequestedOutput("labels", binary_data=True)
        parts.append(client.infer(model, [tensor], outputs=[wanted]).as_numpy("labels"))
    return np.concatenate(parts)


@pytest.fixture(scope="module")
def triton(serve_bundle, tmp_path_factory):
    from edgeseg.serve.triton_launch import TritonServer

    repo = tmp_path_factory.mktemp("triton") / "repo"
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--kind", "KIND_CPU",
                                             "--max-batch", str(MAX_SLICES)])
    assert result.exit_code == 0, result.output
    server = TritonServer(repo, start_timeout=240, workdir=repo.parent / "server")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def series_hu() -> np.ndarray:
    from edgeseg.data.dicom import read_dicom_series

    hu = read_dicom_series(SERIES).hu
    as_int16 = hu.astype(np.int16)
    assert np.array_equal(as_int16, hu)  # stored CT values are integers: INT16 loses nothing
    return as_int16


@pytest.fixture(scope="module")
def predicted(serve_bundle, tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("predict") / "labels.npy"
    result = GuardedCliRunner().invoke(cli, ["predict", str(serve_bundle), str(SERIES), "--out", str(out),
                                             "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    return np.load(out)


def test_pipeline_on_triton_and_edgeseg_serve_equals_edgeseg_predict(triton, server, series_hu, predicted, serve_bundle):
    from edgeseg.runtime.manifest import read_manifest

    on_triton = segment_with_tritonclient(triton.url, series_hu)
    on_serve = segment_with_tritonclient(server.url, series_hu)
    assert on_triton.shape == on_serve.shape == predicted.shape == (3, 512, 512)
    assert np.count_nonzero(on_triton != on_serve) == 0
    assert np.count_nonzero(on_triton != predicted) == 0
    assert set(np.unique(predicted)) <= set(read_manifest(serve_bundle).labels)
    assert len(np.unique(predicted)) > 1  # a real segmentation, not one class everywhere


def test_network_model_gives_the_same_logits_on_both(triton, server, series_hu, serve_bundle):
    from edgeseg.kernels import preprocess
    from edgeseg.runtime.manifest import read_manifest

    manifest = read_manifest(serve_bundle)
    x = preprocess(series_hu, manifest.spec)
    logits = {}
    for name, url in (("triton", triton.url), ("serve", server.url)):
        client = tritonclient_http.InferenceServerClient(url=url)
        tensor = tritonclient_http.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        logits[name] = client.infer("edgeseg", [tensor]).as_numpy("logits")
    assert logits["triton"].shape == (3, len(manifest.labels), *manifest.spec.size)
    np.testing.assert_allclose(logits["triton"], logits["serve"], rtol=1e-5, atol=1e-5)


def test_triton_models_refuse_what_edgeseg_serve_refuses(triton, series_hu):
    client = tritonclient_http.InferenceServerClient(url=triton.url)
    hu = np.ascontiguousarray(series_hu[:1, None, :64, :64], dtype=np.float32)
    tensor = tritonclient_http.InferInput("image", list(hu.shape), "FP32")
    tensor.set_data_from_numpy(hu)
    with pytest.raises(InferenceServerException, match="looks like HU: send CT values to model 'edgeseg-pipeline'") as refused:
        client.infer("edgeseg", [tensor])
    # a refused input is the client's error, 400 as from edgeseg serve (Triton answered 500)
    assert refused.value.status() == "400"
    index = {m["name"]: m["state"] for m in client.get_model_repository_index()}
    assert index == {"edgeseg": "READY", "edgeseg-pipeline": "READY"}


def test_a_mirroring_pipeline_on_triton_equals_mirrored_predict(serve_bundle, series_hu, tmp_path):
    """`edgeseg triton --tta mirror`: the pipeline model averages the four mirrors as `edgeseg
    predict --tta mirror` does (its labels differ from one pass somewhere, or the check is void),
    while the network model stays one pass."""
    from edgeseg.serve.triton_launch import TritonServer

    repo = tmp_path / "repo"
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--kind", "KIND_CPU", "--max-batch",
                                             str(MAX_SLICES), "--tta", "mirror"])
    assert result.exit_code == 0, result.output
    expected = {}
    for mode in ("none", "mirror"):
        out = tmp_path / f"labels-{mode}.npy"
        done = GuardedCliRunner().invoke(cli, ["predict", str(serve_bundle), str(SERIES), "--out", str(out), "--backend",
                                               "onnxruntime:fp32", "--tta", mode, "--quiet"])
        assert done.exit_code == 0, done.output
        expected[mode] = np.load(out)
    assert np.count_nonzero(expected["none"] != expected["mirror"]) > 0
    server = TritonServer(repo, start_timeout=240, workdir=tmp_path / "server")
    server.start()
    try:
        on_triton = segment_with_tritonclient(server.url, series_hu)
        client = tritonclient_http.InferenceServerClient(url=server.url)
        config = client.get_model_config("edgeseg")
    finally:
        server.stop()
    assert np.count_nonzero(on_triton != expected["mirror"]) == 0
    assert "edgeseg_tta" not in config.get("parameters", {})


def test_server_over_relative_repository_and_work_folder(serve_bundle, series_hu, tmp_path, monkeypatch):
    """Relative paths mean the caller's folder: the server runs in its work folder, where the
    repository and the backend folder were not found when passed on as given."""
    from edgeseg.serve.triton_launch import TritonServer

    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "repo"), "--kind", "KIND_CPU",
                                             "--max-batch", str(MAX_SLICES)])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    with TritonServer("repo", start_timeout=240, workdir="server") as server:
        labels = segment_with_tritonclient(server.url, series_hu[:1])
    assert labels.shape == series_hu[:1].shape and labels.dtype == np.uint8
