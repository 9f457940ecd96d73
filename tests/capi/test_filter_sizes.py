"""Component filters whose size in voxels does not fit int64 (a minimum volume in mL over very
small voxels) remove every component in libedgeseg and in the Python runtime alike, and a spacing
whose voxel volume is no normal number (1e-200 mm per side: the product underflows to 0) is
refused by both with the same one-line message."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.errors import DataError
from edgeseg.runtime import Segmenter

ES_OK, ES_EINVAL = 0, 1
MIN_ML = 1.0


@pytest.fixture(scope="module")
def min_ml_bundle(bundle, tmp_path_factory):
    """The suite's bundle removing 3-D components of class 1 under 1 mL."""
    copy = shutil.copytree(bundle, tmp_path_factory.mktemp("min-ml") / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = {"resize": "logits", "classes": {"1": {"min_ml": MIN_ML}}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _c_spaced(programs, bundle, hu, spacing, tmp_path):
    """(code, message, labels or None) of es_segment_volume_spaced on int16 ``hu``."""
    src, dst = tmp_path / "hu.raw", tmp_path / "labels.raw"
    hu.astype("<i2").tofile(src)
    dst.unlink(missing_ok=True)
    args = [str(programs["checks"]), "spaced", *(repr(float(s)) for s in spacing), str(bundle), "fp32",
            *(str(n) for n in hu.shape), str(src), str(dst)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    code, message = result.stdout.splitlines()[0].split("\t", 1)
    labels = np.fromfile(dst, dtype=np.uint8).reshape(hu.shape) if dst.exists() else None
    return int(code), message, labels


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 0.5), (1e-5, 1e-5, 1e-5), (1e-6, 1e-6, 1e-6),
                                     (1e-100, 1e-100, 1e-100)])
def test_min_ml_masks_equal_python_at_any_spacing(spacing, bundle, min_ml_bundle, phantom_hu, programs, tmp_path):
    with Segmenter.load(bundle, backend="openvino:fp32") as plain:
        raw = plain.predict_volume(phantom_hu)
    _, count = ndimage.label(raw == 1)
    assert count == 1, "the reasoning below takes one component"
    size = int(np.count_nonzero(raw == 1))
    # 1 mL in voxels of prod(spacing) mm^3: 1000 at 1 mm (kept), 2000 at half a mm (removed),
    # 1e18 at 1e-5 mm, 1e21 at 1e-6 mm (beyond int64) and 1e303 at 1e-100 mm: removed
    needed = MIN_ML * 1000.0 / math.prod(spacing)
    expected = raw if size >= needed else np.zeros_like(raw)
    with Segmenter.load(min_ml_bundle, backend="openvino:fp32") as seg:
        got_python = seg.predict_volume(phantom_hu, spacing=spacing)
    code, message, got_c = _c_spaced(programs, min_ml_bundle, phantom_hu, spacing, tmp_path)
    assert (code, message) == (ES_OK, "")
    np.testing.assert_array_equal(got_python, expected)
    np.testing.assert_array_equal(got_c, expected)
    assert size > 1000 and (spacing != (1.0, 1.0, 1.0) or got_c.any())


@pytest.mark.parametrize("spacing", [(1e-200, 1e-200, 1e-200), (1e-102, 1e-102, 1e-102), (1e300, 1e300, 1.0),
                                     (-1.0, -1.0, 1.0)])
def test_a_spacing_without_a_normal_voxel_volume_is_refused_by_both(spacing, min_ml_bundle, phantom_hu, programs,
                                                                    tmp_path):
    code, message, labels = _c_spaced(programs, min_ml_bundle, phantom_hu, spacing, tmp_path)
    with Segmenter.load(min_ml_bundle, backend="openvino:fp32") as seg, pytest.raises(DataError) as caught:
        seg.predict_volume(phantom_hu, spacing=spacing)
    assert code == ES_EINVAL and labels is None
    assert message == str(caught.value) and "voxel volume" in message and "\n" not in message


def test_a_spacing_passed_in_is_checked_where_no_class_needs_it(bundle, phantom_hu, programs, tmp_path):
    """es_segment_volume_spaced checks its spacing whatever the bundle filters; so does
    predict_volume(spacing=...)."""
    spacing = (1e-200, 1e-200, 1e-200)
    code, message, _ = _c_spaced(programs, bundle, phantom_hu, spacing, tmp_path)
    with Segmenter.load(bundle, backend="openvino:fp32") as seg, pytest.raises(DataError) as caught:
        seg.predict_volume(phantom_hu, spacing=spacing)
    assert code == ES_EINVAL and message == str(caught.value)


@pytest.mark.parametrize(("min_pixels", "accepted"), [(10**15, True), (10**15 + 1, False)])
def test_both_runtimes_take_min_pixels_up_to_the_same_limit(min_pixels, accepted, bundle, tmp_path, run_checks):
    from edgeseg.errors import BundleError

    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = {"resize": "logits", "classes": {"1": {"min_pixels": min_pixels}}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, message, _ = run_checks("open", copy, "fp32")
    try:
        Segmenter.load(copy, backend="openvino:fp32").close()
        python = ""
    except BundleError as exc:
        python = str(exc)
    assert (code == ES_OK, python == "") == (accepted, accepted), (message, python)
    if not accepted:
        assert "min_pixels must be an integer from 0 to 10^15" in message and "10^15" in python
