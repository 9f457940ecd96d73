"""The pipeline model's optional ``spacing`` input, on a real ``edgeseg serve`` and a real Triton
(nvidia-pytriton's tritonserver over the repository ``edgeseg triton --kind KIND_CPU`` writes).

The bundle is the test bundle with a 3-D filter in mL on the liver, its threshold set between the
sizes of two liver components of the request stack, so the filter removes one and keeps the other.
The oracle is the local Segmenter (``predict_volume(hu, spacing=...)``), itself checked against
scipy's component labelling.
"""

from __future__ import annotations

import json
import math
import shutil
import urllib.request

import numpy as np
import pytest

from edgeseg.cli.main import cli
from edgeseg.data.phantom import synth_phantom
from edgeseg.kernels import ComponentRule, filter_components
from edgeseg.runtime.segmenter import Segmenter
from edgeseg.serve.triton_launch import pytriton_root
from tests.guarded_cli import GuardedCliRunner

http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (present with tritonclient)

# exact in FP32, as a client sends it: the voxel count of min_ml is the same on every path
SPACING = (2.5, 0.75, 0.5)
VOXEL_ML = math.prod(SPACING) / 1000


def _stack() -> np.ndarray:
    """Two copies of a slice with liver, an air slice, one more copy: two liver components of the
    volume (6-connected), the first twice the size of the second (the network sees each slice alone)."""
    hu = synth_phantom("case_spacing", 3, shape=(8, 64, 64)).hu[4].astype(np.int16)
    air = np.full_like(hu, -1000)
    return np.ascontiguousarray(np.stack([hu, hu, air, hu]))


def _components(labels: np.ndarray) -> list[int]:
    from scipy import ndimage

    comp, count = ndimage.label(labels == 1)  # 6-connected in 3-D, as the volume filter
    return sorted(np.bincount(comp.ravel())[1:].tolist())


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    return _stack()


@pytest.fixture(scope="module")
def min_ml(exported_bundle, hu) -> float:
    """A liver threshold between the two components' volumes at SPACING."""
    with Segmenter.load(exported_bundle, backend="onnxruntime:fp32") as seg:
        sizes = _components(seg.predict_volume(hu, volume_filters=False))
    assert len(sizes) >= 2 and sizes[-2] < sizes[-1], sizes  # the stack gives the filter something to remove
    return round((sizes[-2] + sizes[-1]) / 2 * VOXEL_ML, 4)


@pytest.fixture(scope="module")
def serve_bundle(exported_bundle, min_ml, tmp_path_factory):
    """Overrides the serve fixtures' bundle: the test bundle with the liver filtered by mL."""
    copy = shutil.copytree(exported_bundle, tmp_path_factory.mktemp("spacing") / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = {"resize": "logits", "classes": {"1": {"min_ml": min_ml}}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def expected(serve_bundle, hu, min_ml) -> np.ndarray:
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        raw = local.predict_volume(hu, volume_filters=False)
        want = local.predict_volume(hu, spacing=SPACING)
    voxels = math.ceil(min_ml / VOXEL_ML - 1e-9)
    oracle = filter_components(raw, {1: ComponentRule(min_size=voxels)}, volume=True, reference=True)
    np.testing.assert_array_equal(want, oracle)
    assert np.count_nonzero(want != raw) > 0 and (want == 1).any()  # removes one component, keeps one
    return want


@pytest.fixture(scope="module")
def triton(serve_bundle, exported_bundle, pad_bundle, tmp_path_factory):
    """One Triton over three models: ``edgeseg`` (liver filtered by mL), ``plain`` (the test bundle
    as exported) and ``pad`` (a fit=pad bundle)."""
    if pytriton_root() is None:
        pytest.skip("tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")
    from edgeseg.serve.triton_launch import TritonServer

    repo = tmp_path_factory.mktemp("triton") / "repo"
    outputs = {}
    for name, bundle in (("edgeseg", serve_bundle), ("plain", exported_bundle), ("pad", pad_bundle)):
        result = GuardedCliRunner().invoke(cli, ["triton", str(bundle), str(repo), "--kind", "KIND_CPU", "--max-batch", "4",
                                                 "--name", name, "--force"])
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
    server = TritonServer(repo, start_timeout=240, workdir=repo.parent / "server")
    server.start()
    server.cli_outputs = outputs
    yield server
    server.stop()


def _infer(url: str, hu: np.ndarray, spacing=None, model: str = "edgeseg-pipeline") -> np.ndarray:
    client = http.InferenceServerClient(url=url, network_timeout=120)
    tensor = http.InferInput("hu", list(hu.shape), "INT16")
    tensor.set_data_from_numpy(hu, binary_data=True)
    inputs = [tensor]
    if spacing is not None:
        values = np.asarray(spacing, dtype=np.float32)
        inputs.append(http.InferInput("spacing", list(values.shape), "FP32"))
        inputs[-1].set_data_from_numpy(values)
    return client.infer(model, inputs).as_numpy("labels")


def _ready(url: str) -> bool:
    return http.InferenceServerClient(url=url).is_server_ready()


def test_edgeseg_triton_says_the_pipeline_needs_spacing(triton, min_ml):
    assert (f"edgeseg-pipeline removes 3-D components of class 1 (liver) under {min_ml:g} mL: every request needs "
            "the input 'spacing'") in triton.cli_outputs["edgeseg"]
    assert "spacing" not in triton.cli_outputs["plain"]


def test_both_servers_filter_with_the_request_s_spacing(triton, server, hu, expected):
    for url in (triton.url, server.url):
        labels = _infer(url, hu, SPACING)
        assert labels.shape == hu.shape and labels.dtype == np.uint8
        assert np.count_nonzero(labels != expected) == 0


def test_a_request_without_spacing_is_refused_before_the_network_runs(triton, server, hu, expected, min_ml):
    stats = http.InferenceServerClient(url=server.url).get_inference_statistics("edgeseg-pipeline")
    runs = stats["model_stats"][0]["execution_count"]
    for url in (triton.url, server.url):
        with pytest.raises(InferenceServerException) as refused:
            _infer(url, hu)
        message = refused.value.message()
        assert refused.value.status() == "400", message
        assert f"class 1 (liver) under {min_ml:g} mL" in message and "input 'spacing'" in message
        assert "spacing=(z, y, x)" not in message  # not the Python API's hint
        assert _ready(url)
        assert np.count_nonzero(_infer(url, hu, SPACING) != expected) == 0  # and still serves
    stats = http.InferenceServerClient(url=server.url).get_inference_statistics("edgeseg-pipeline")
    assert stats["model_stats"][0]["execution_count"] == runs + 1  # the refused request never ran


@pytest.mark.parametrize("spacing,message", [
    ((0.0, 0.75, 0.5), "input 'spacing': spacing must be three finite voxel sizes > 0"),
    ((math.nan, 0.75, 0.5), "input 'spacing': spacing must be three finite voxel sizes > 0"),
    ((2.5, -0.75, 0.5), "input 'spacing': spacing must be three finite voxel sizes > 0"),
    ((2.5, 0.75), None),  # Triton refuses the shape itself, against the config's dims
])
def test_a_bad_spacing_is_one_line_400_on_both(triton, server, hu, spacing, message):
    for url in (triton.url, server.url):
        with pytest.raises(InferenceServerException) as refused:
            _infer(url, hu, spacing)
        assert refused.value.status() == "400", refused.value.message()
        assert "\n" not in refused.value.message()
        if message is not None or url == server.url:
            assert (message or "takes input 'spacing' as FP32 of shape [3]") in refused.value.message()
        assert _ready(url)


def test_a_spacing_sent_to_a_bundle_without_ml_filter_is_accepted_and_unused(triton, exported_bundle, hu):
    from tests.serve.conftest import RunningServer

    from edgeseg.serve.app import ServeConfig, create_app

    with Segmenter.load(exported_bundle, backend="onnxruntime:fp32") as local:
        want = local.predict_volume(hu)
    plain = RunningServer(create_app(Segmenter.load(exported_bundle, backend="onnxruntime:fp32"),
                                     ServeConfig(max_batch=4)))
    try:
        on_serve = [_infer(plain.url, hu, spacing) for spacing in (None, SPACING)]
    finally:
        plain.stop()
    on_triton = [_infer(triton.url, hu, spacing, model="plain-pipeline") for spacing in (None, SPACING)]
    for labels in (*on_serve, *on_triton):
        assert np.count_nonzero(labels != want) == 0


def test_metadata_and_config_declare_spacing_optional(triton, server):
    for url in (triton.url, server.url):
        client = http.InferenceServerClient(url=url)
        config = client.get_model_config("edgeseg-pipeline")
        inputs = {t["name"]: t for t in config["input"]}
        assert inputs["spacing"]["data_type"] == "TYPE_FP32" and inputs["spacing"]["dims"] == [3]
        assert inputs["spacing"]["optional"] is True and not inputs["hu"].get("optional", False)
        assert config["max_batch_size"] == 0
    meta = json.loads(urllib.request.urlopen(f"http://{server.url}/v2/models/edgeseg-pipeline").read())
    assert {"name": "spacing", "datatype": "FP32", "shape": [3], "optional": True} in meta["inputs"]


def test_pad_bundle_on_triton_equals_edgeseg_predict_on_an_odd_slice(triton, pad_bundle, tmp_path):
    """A fit=pad bundle on a 153 x 211 slice (odd, not square: the padded box and its undoing
    are not symmetric): Triton's labels are those of `edgeseg predict`, pixel for pixel."""
    hu = np.ascontiguousarray(synth_phantom("case_pad", 5, shape=(3, 153, 211)).hu.astype(np.int16))
    np.save(tmp_path / "hu.npy", hu)
    result = GuardedCliRunner().invoke(cli, ["predict", str(pad_bundle), str(tmp_path / "hu.npy"), "--out",
                                             str(tmp_path / "labels.npy"), "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    predicted = np.load(tmp_path / "labels.npy")
    assert len(np.unique(predicted)) > 1  # a real mask, not one class everywhere
    on_triton = _infer(triton.url, hu, model="pad-pipeline")
    assert on_triton.shape == predicted.shape == (3, 153, 211)
    assert np.count_nonzero(on_triton != predicted) == 0
