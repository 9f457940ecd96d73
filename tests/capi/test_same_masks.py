"""libedgeseg gives the Python runtime's masks, voxel for voxel, on real CT and on a phantom.

The oracle is ``Segmenter.load(bundle, backend="openvino:PRECISION")`` on the same int16 HU:
``predict_volume`` for the volume calls of both examples, ``predict`` for slice-by-slice calls
(made on row-padded copies, so row strides are exercised too).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeseg.runtime import Segmenter

PRECISIONS = ("int8", "fp32")
# The exported post-processing, and the other settings a manifest may choose.
POSTPROCESS = {"as-exported": None, "largest-labels": {"keep_largest": True, "resize": "labels"},
               "largest-logits": {"keep_largest": True, "resize": "logits"},
               "per-class-3d": {"resize": "logits",
                                "classes": {"1": {"min_pixels": 30, "keep_largest_3d": True}}}}


@pytest.fixture(scope="module", params=list(POSTPROCESS))
def variant(request, bundle, tmp_path_factory):
    """The bundle, or a copy whose manifest asks for other post-processing (artifacts unchanged)."""
    if POSTPROCESS[request.param] is None:
        return bundle
    copy = shutil.copytree(bundle, tmp_path_factory.mktemp(request.param) / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = POSTPROCESS[request.param]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module", params=PRECISIONS)
def python_segmenter(request, variant):
    with Segmenter.load(variant, backend=f"openvino:{request.param}") as seg:
        assert seg.backend == f"openvino:{request.param}"
        yield request.param, seg


@pytest.mark.parametrize("series", ["dcmqi_hu", "phantom_hu"])
@pytest.mark.parametrize("example", ["c", "cpp"])
def test_volume_masks_equal_python(series, example, python_segmenter, variant, programs, run_raw, tmp_path, request):
    precision, seg = python_segmenter
    hu = request.getfixturevalue(series)
    expected = seg.predict_volume(hu)
    got = run_raw(programs[example], variant, precision, hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0
    if series == "phantom_hu":  # the model was trained on phantoms: a mask of background only would be a broken run
        assert np.count_nonzero(expected) > 100


@pytest.mark.parametrize("series", ["dcmqi_hu", "phantom_hu"])
def test_slice_masks_equal_python(series, python_segmenter, variant, programs, run_raw, tmp_path, request):
    precision, seg = python_segmenter
    hu = request.getfixturevalue(series)
    expected = np.stack([seg.predict(s) for s in hu])
    got = run_raw(programs["checks"], variant, precision, hu, tmp_path, mode="slices")
    assert int(np.count_nonzero(got != expected)) == 0
