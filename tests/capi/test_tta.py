"""Test-time mirroring in C (es_set_tta) gives the Python runtime's mirrored masks.

The oracle is ``Segmenter.load(bundle, backend="openvino:PRECISION", tta=MODE).predict_volume``
on the same int16 HU; the C driver also checks that a slice segmented alone equals the volume's.
Both sides do the same float32 steps (softmax per pass, sum in pass order, mean, log); numpy's
and libm's exp and log may round a last bit apart, so a label could flip at an exact tie: the
test allows a handful of voxels (none in practice) and reports how many.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime import Segmenter

ES_OK, ES_EINVAL = 0, 1


def _run_tta(programs, bundle, precision, mode, hu, tmp_path):
    src, dst = tmp_path / "hu.raw", tmp_path / f"labels-{precision}-{mode}.raw"
    hu.astype("<i2").tofile(src)
    args = [str(programs["checks"]), "tta", mode, str(bundle), precision, *map(str, hu.shape), str(src), str(dst)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split("\t")[0] == str(ES_OK), done.stdout
    return np.fromfile(dst, dtype=np.uint8).reshape(hu.shape)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("mode", ["flip", "mirror"])
@pytest.mark.parametrize("series", ["dcmqi_hu", "phantom_hu"])
def test_mirrored_masks_equal_python(series, mode, precision, bundle, programs, tmp_path, request):
    hu = request.getfixturevalue(series)
    with Segmenter.load(bundle, backend=f"openvino:{precision}", tta=mode) as seg:
        expected = seg.predict_volume(hu)
    got = _run_tta(programs, bundle, precision, mode, hu, tmp_path)
    differ = int(np.count_nonzero(got != expected))
    assert differ <= 5, f"{differ} of {got.size} voxels differ from the Python runtime's"


def test_a_region_model_s_mirrors_average_its_region_sigmoids_as_python_does(bundle, programs, phantom_hu, tmp_path):
    """A manifest naming regions makes both runtimes read the outputs as region scores
    (edgeseg.models.regions) and average each region's sigmoid; the suite's softmax network
    stands in for a region network (its class-1 output read as the region's score), which
    decodes otherwise than its softmax mirrors, so a C runtime that ignored the flag would fail."""
    import json
    import shutil

    copy = Path(shutil.copytree(bundle, tmp_path / "regions"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["regions"] = [[1]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with Segmenter.load(copy, backend="openvino:fp32", tta="mirror") as seg:
        assert seg.regions
        expected = seg.predict_volume(phantom_hu)
    got = _run_tta(programs, copy, "fp32", "mirror", phantom_hu, tmp_path)
    differ = int(np.count_nonzero(got != expected))
    assert differ <= 5, f"{differ} of {got.size} voxels differ from the Python runtime's"
    softmax = _run_tta(programs, bundle, "fp32", "mirror", phantom_hu, tmp_path)
    assert np.count_nonzero(softmax != got) > 5 * (differ + 1)


def test_mirroring_changes_the_masks_it_should(bundle, programs, phantom_hu, tmp_path):
    """Without this, a library that ignored the mode would pass the test above wherever the
    mirrors happened to agree."""
    plain = _run_tta(programs, bundle, "fp32", "none", phantom_hu, tmp_path)
    mirrored = _run_tta(programs, bundle, "fp32", "mirror", phantom_hu, tmp_path)
    with Segmenter.load(bundle, backend="openvino:fp32") as seg:
        np.testing.assert_array_equal(plain, seg.predict_volume(phantom_hu))
    assert np.count_nonzero(plain != mirrored) > 0


@pytest.mark.parametrize("case, code, message", [
    ("tta-unknown", ES_EINVAL, "test-time augmentation must be one of none, flip, mirror, got 'rot90'"),
    ("tta-null-mode", ES_EINVAL, "test-time augmentation must be one of none, flip, mirror, got NULL"),
    ("tta-null-segmenter", ES_EINVAL, "segmenter is NULL"),
    ("tta-kept", ES_OK, ""),
])
def test_bad_modes_are_refused_and_change_nothing(bundle, run_checks, case, code, message):
    got, text, _ = run_checks("call", bundle, case)
    assert (got, text) == (code, message)
