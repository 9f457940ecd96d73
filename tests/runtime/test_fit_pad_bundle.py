"""A fit=pad bundle through the runtime: labels at the input's shape, equal to the numpy oracle's
pre- and post-processing around the same model; old bundles still mean stretch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.kernels import reference
from edgeseg.kernels.components import filter_components
from edgeseg.runtime import Segmenter


def ct_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    hu = np.full(shape, -1000.0)
    rows, cols = shape[-2:]
    hu[..., rows // 5: rows - rows // 5, cols // 6: cols - cols // 6] = 40
    hu[..., rows // 3: rows // 2, cols // 4: cols // 2] = 200
    return (hu + rng.normal(0, 30, shape)).astype(np.int16)


@pytest.fixture(scope="module")
def pad_segmenter(pad_bundle):
    with Segmenter.load(pad_bundle, backend="onnxruntime:fp32") as seg:
        yield seg


def oracle_labels(seg: Segmenter, hu: np.ndarray) -> np.ndarray:
    """numpy pre-processing -> the same model -> numpy post-processing."""
    logits = seg.logits(reference.preprocess(hu, seg.spec).astype(np.float32))
    labels = reference.postprocess(logits, hu.shape[-2:], keep_largest=False, resize=seg.resize_mode, fit="pad")
    rules = seg.postprocess.slice_rules(tuple(hu.shape[-2:]), seg.spec.size)
    return filter_components(labels, rules, reference=True) if rules else labels


def test_the_manifest_records_fit_pad(pad_bundle, pad_segmenter):
    manifest = json.loads((pad_bundle / "manifest.json").read_text())
    assert manifest["spec"]["fit"] == "pad"
    assert pad_segmenter.spec.fit == "pad"


@pytest.mark.parametrize("shape", [(153, 456), (457, 351), (37, 90), (2, 128)])
def test_predict_returns_labels_at_the_input_shape_equal_to_the_oracle(pad_segmenter, shape):
    hu = ct_like(np.random.default_rng(sum(shape)), shape)
    labels = pad_segmenter.predict(hu)
    assert labels.shape == shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, oracle_labels(pad_segmenter, hu[None])[0])


def test_predict_volume_of_a_non_square_volume(pad_segmenter):
    hu = ct_like(np.random.default_rng(5), (6, 71, 130))
    labels = pad_segmenter.predict_volume(hu, batch_size=4)
    assert labels.shape == hu.shape
    np.testing.assert_array_equal(labels, oracle_labels(pad_segmenter, hu))
    assert len(np.unique(labels)) > 1  # noise weights, but not one flat class


def test_a_slice_too_thin_to_pad_is_refused_before_inference(pad_segmenter):
    with pytest.raises(DataError, match="2x300 slice cannot be padded into 64x64"):
        pad_segmenter.predict(ct_like(np.random.default_rng(0), (2, 300)))


def test_a_bundle_without_fit_loads_as_stretch(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert "fit" not in manifest["spec"]
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        assert seg.spec.fit == "stretch"
        hu = ct_like(np.random.default_rng(1), (40, 90))
        logits = seg.infer(reference.preprocess(hu, seg.spec).astype(np.float32))
        want = reference.postprocess(logits, hu.shape, keep_largest=seg.keep_largest, resize=seg.resize_mode)
        np.testing.assert_array_equal(seg.predict(hu), want[0])


def _predict_cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", *map(str, args), "--backend",
                           "onnxruntime:fp32", "--quiet"], capture_output=True, text=True, timeout=300)


def test_predict_cli_writes_labels_at_the_input_shape(pad_bundle, pad_segmenter, tmp_path):
    hu = ct_like(np.random.default_rng(2), (3, 57, 140))
    np.save(tmp_path / "hu.npy", hu)
    proc = _predict_cli(pad_bundle, tmp_path / "hu.npy", "--out", tmp_path / "labels.npy")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), pad_segmenter.predict_volume(hu))


def test_predict_cli_refuses_a_slice_too_thin_to_pad(pad_bundle, tmp_path, assert_one_line_error):
    np.save(tmp_path / "thin.npy", ct_like(np.random.default_rng(3), (2, 2, 300)))
    out = tmp_path / "out" / "labels.npy"
    proc = _predict_cli(pad_bundle, tmp_path / "thin.npy", "--out", out)
    assert_one_line_error(proc, "2x300 slice cannot be padded into 64x64")
    assert not out.exists()
