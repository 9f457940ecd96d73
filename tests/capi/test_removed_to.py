"""libedgeseg honours ``removed_to`` (a class's filtered-out pixels given to another class) as the
Python runtime does, voxel for voxel, on the chest bundle's two lesion classes; a bad value is
refused when the bundle opens.

The filters' sizes and the expected masks come from the bundle's own unfiltered masks and a scipy
oracle, not from figures of one training: which islands the model draws, and so how many pixels
are given, depends on how the bundle trained."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.runtime import Segmenter

ES_EBUNDLE = 16
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _with_postprocess(bundle, tmp_path, post, name):
    copy = shutil.copytree(bundle, tmp_path / name)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = post
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def chest_hu() -> np.ndarray:
    return np.ascontiguousarray(synth_chest_phantom("chest_007", 7, shape=(8, 96, 96)).hu.astype(np.int16))


def _sizes(labels: np.ndarray, cls: int) -> list[int]:
    """The sizes of the 8-connected components of ``cls`` in each slice of ``labels``."""
    from scipy import ndimage

    sizes = []
    for plane in labels:
        comp, count = ndimage.label(plane == cls, structure=EIGHT_CONNECTED)
        sizes += np.bincount(comp.ravel())[1:].tolist() if count else []
    return sizes


def _min_pixels(sizes: list[int]) -> int:
    """A filter size that removes some components of ``sizes`` and, where they differ, keeps others."""
    distinct = sorted(set(sizes))
    return distinct[len(distinct) // 2] if len(distinct) > 1 else distinct[0] + 1


def _filtered(labels: np.ndarray, rules: dict[int, tuple[int, int]]) -> np.ndarray:
    """scipy oracle: per slice, each class's 8-connected components under ``rules[c][0]`` pixels
    become ``rules[c][1]``, every class's components found on the masks as given."""
    from scipy import ndimage

    out = labels.copy()
    for given, plane in zip(labels, out):
        for cls, (min_pixels, to) in rules.items():
            comp, _ = ndimage.label(given == cls, structure=EIGHT_CONNECTED)
            small = np.bincount(comp.ravel()) < min_pixels
            small[0] = False
            plane[small[comp]] = to
    return out


def test_volume_masks_with_removed_to_equal_the_oracle(chest_bundle_run, chest_hu, programs, run_raw, tmp_path):
    bundle = chest_bundle_run / "bundle"
    with Segmenter.load(_with_postprocess(bundle, tmp_path, {"resize": "logits"}, "plain"),
                        backend="openvino:fp32") as seg:
        assert seg.spec.size == chest_hu.shape[1:]  # min_pixels counts these pixels, unscaled
        plain = seg.predict_volume(chest_hu)
    # the class whose islands are given: consolidation (2) to ground-glass (1), or the other way
    # where this training segments no consolidation here
    giver = 2 if _sizes(plain, 2) else 1
    taker = 3 - giver
    assert _sizes(plain, giver), "the chest bundle segments no lesion in the chest phantom"
    rules = {giver: (_min_pixels(_sizes(plain, giver)), taker)}
    if _sizes(plain, taker):  # the taker's own small islands are removed, not the pixels it is given
        rules[taker] = (_min_pixels(_sizes(plain, taker)), 0)
    expected = _filtered(plain, rules)
    assert np.count_nonzero((plain == giver) & (expected == taker)) > 0  # by the choice of the filter size
    post = {"resize": "logits", "classes": {str(c): {"min_pixels": int(m), **({"removed_to": to} if to else {})}
                                            for c, (m, to) in rules.items()}}
    giving = _with_postprocess(bundle, tmp_path, post, "giving")
    with Segmenter.load(giving, backend="openvino:fp32") as seg:
        np.testing.assert_array_equal(seg.predict_volume(chest_hu), expected)
    got = run_raw(programs["c"], giving, "fp32", chest_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0


@pytest.mark.parametrize("value", [2, 3, -1, 1.5, "1"])
def test_a_bad_removed_to_is_refused(chest_bundle_run, tmp_path, run_checks, value):
    post = {"resize": "logits", "classes": {"2": {"min_pixels": 10, "removed_to": value}}}
    code, message, _ = run_checks("open", _with_postprocess(chest_bundle_run / "bundle", tmp_path, post, "bad"), "fp32")
    assert code == ES_EBUNDLE and 'postprocess.classes["2"].removed_to must be another class number in 0..2' in message
