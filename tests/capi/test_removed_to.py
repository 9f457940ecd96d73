"""libedgeseg honours ``removed_to`` (a class's filtered-out pixels given to another class) as the
Python runtime does, voxel for voxel, on the chest bundle's two lesion classes; a bad value is
refused when the bundle opens."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.runtime import Segmenter

ES_EBUNDLE = 16
# consolidation islands under 40 model pixels become ground-glass (this volume has five of 2-39);
# ground-glass islands under 30 are removed
GIVING = {"resize": "logits", "classes": {"1": {"min_pixels": 30}, "2": {"min_pixels": 40, "removed_to": 1}}}


def _with_postprocess(bundle, tmp_path, post, name):
    copy = shutil.copytree(bundle, tmp_path / name)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = post
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def chest_hu() -> np.ndarray:
    return np.ascontiguousarray(synth_chest_phantom("chest_007", 7, shape=(8, 96, 96)).hu.astype(np.int16))


def test_volume_masks_with_removed_to_equal_python(chest_bundle_run, chest_hu, programs, run_raw, tmp_path):
    giving = _with_postprocess(chest_bundle_run / "bundle", tmp_path, GIVING, "giving")
    dropping = json.loads(json.dumps(GIVING))
    del dropping["classes"]["2"]["removed_to"]
    plain = _with_postprocess(chest_bundle_run / "bundle", tmp_path, dropping, "dropping")
    with Segmenter.load(giving, backend="openvino:fp32") as seg:
        expected = seg.predict_volume(chest_hu)
    with Segmenter.load(plain, backend="openvino:fp32") as seg:
        dropped = seg.predict_volume(chest_hu)
    given = (dropped == 0) & (expected == 1)
    assert given.any(), "no consolidation island was given to ground-glass: the check below would prove nothing"
    np.testing.assert_array_equal(expected[~given], dropped[~given])
    got = run_raw(programs["c"], giving, "fp32", chest_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0


@pytest.mark.parametrize("value", [2, 3, -1, 1.5, "1"])
def test_a_bad_removed_to_is_refused(chest_bundle_run, tmp_path, run_checks, value):
    post = {"resize": "logits", "classes": {"2": {"min_pixels": 10, "removed_to": value}}}
    code, message, _ = run_checks("open", _with_postprocess(chest_bundle_run / "bundle", tmp_path, post, "bad"), "fp32")
    assert code == ES_EBUNDLE and 'postprocess.classes["2"].removed_to must be another class number in 0..2' in message
