"""Per-class post-processing options: the old single flag's migration, checks, and the 3-D
filters on the volume path against scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.errors import BundleError, DataError
from edgeseg.kernels import ComponentRule, filter_components
from edgeseg.runtime import Segmenter
from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions


def _with_postprocess(bundle, post) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["postprocess"] = post
    path.write_text(json.dumps(manifest))


def test_a_deeply_nested_resize_is_one_short_line_naming_the_key(bundle_copy):
    """The error quoted the whole value: a 700-deep {"resize": {"resize": ...}} made an 8 kB line."""
    import subprocess
    import sys
    from pathlib import Path

    series = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
    value = "logits"
    for _ in range(700):
        value = {"resize": value}
    _with_postprocess(bundle_copy, {"resize": value})
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bundle_copy), str(series),
                           "--out", str(bundle_copy.parent / "out.nii.gz")], capture_output=True, text=True, timeout=300)
    [line] = proc.stderr.splitlines()
    assert proc.returncode != 0 and "postprocess.resize must be one of ('logits', 'labels')" in line, line[:300]
    assert len(line) < 300 and line.endswith(f"({len(repr(value))} characters)"), line[:300]


def test_old_flag_means_largest_per_slice_for_every_class():
    old = PostprocessOptions.from_dict({"keep_largest": True, "val_dice": 0.9, "val_dice_largest": 0.95}, 3)
    assert old.classes == {1: ClassPostprocess(keep_largest=True), 2: ClassPostprocess(keep_largest=True)}
    assert PostprocessOptions.from_dict({"keep_largest": False}, 3).classes == {}
    assert PostprocessOptions.from_dict(None, 3) == PostprocessOptions()
    again = PostprocessOptions.from_dict(old.to_dict(), 3)
    assert again == old


def test_old_manifest_segments_as_its_new_form(bundle_copy, tmp_path):
    volume = synth_phantom("case_011", 5, shape=(9, 70, 80))
    _with_postprocess(bundle_copy, {"keep_largest": True})
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as old:
        old_labels = old.predict_volume(volume)
        assert old.keep_largest and not old.postprocess.filters_volume
    _with_postprocess(bundle_copy, {"resize": "logits", "classes": {"1": {"keep_largest": True}}})
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as new:
        np.testing.assert_array_equal(new.predict_volume(volume), old_labels)
    _with_postprocess(bundle_copy, {"classes": {}})
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as plain:
        raw = plain.predict_volume(volume)
    want = filter_components(raw, {1: ComponentRule(keep_largest=True)}, reference=True)
    np.testing.assert_array_equal(old_labels, want)


@pytest.mark.parametrize("post, match", [
    ({"keep_largest": "yes"}, "keep_largest must be true or false"),
    ({"keep_largest": True, "classes": {}}, "both"),
    ({"classes": {"2": {"keep_largest": True}}}, "not a foreground class"),
    ({"classes": {"0": {"keep_largest": True}}}, "not a foreground class"),
    ({"classes": {"1": {"largest": True}}}, "unknown option"),
    ({"classes": {"1": {"min_pixels": -3}}}, "min_pixels"),
    ({"classes": {"1": {"min_ml": float("nan")}}}, "NaN is not a JSON number"),  # json.dumps writes NaN
    ({"classes": {"1": {"keep_largest_3d": 1}}}, "keep_largest_3d"),
    ({"resize": "nearest"}, "resize"),
    ({"classes": {"1": {"keep_largest": True, "removed_to": 1}}}, "removed_to must be another class number in 0..1"),
    ({"classes": {"1": {"keep_largest": True, "removed_to": 2}}}, "removed_to"),
    ({"classes": {"1": {"keep_largest": True, "removed_to": True}}}, "removed_to"),
])
def test_bad_options_refuse_the_bundle(bundle_copy, post, match):
    _with_postprocess(bundle_copy, post)
    with pytest.raises(BundleError, match=match):
        Segmenter.load(bundle_copy, backend="onnxruntime:fp32")


def test_min_pixels_count_at_the_model_size_and_ml_at_the_voxel_size():
    post = PostprocessOptions(classes={1: ClassPostprocess(min_pixels=10, min_ml=0.5)})
    assert post.slice_rules((128, 128), (64, 64)) == {1: ComponentRule(False, 40)}
    assert post.slice_rules((100, 50), (64, 64)) == {1: ComponentRule(False, math.ceil(10 * 5000 / 4096))}
    assert post.slice_rules((128, 64), (64, 32)) == {1: ComponentRule(False, 40)}  # a non-square model: area x4
    assert post.volume_rules((2.0, 0.5, 0.5)) == {1: ComponentRule(False, 1000)}  # 0.5 mL / 0.0005 mL
    one = PostprocessOptions(classes={1: ClassPostprocess(min_pixels=1)})
    assert one.slice_rules((256, 256), (64, 64)) == {1: ComponentRule(False, 16)}  # one model pixel is 16 here
    with pytest.raises(DataError, match="spacing"):
        post.volume_rules(None)


def test_predict_volume_applies_3d_filters_with_the_volume_spacing(bundle_copy):
    volume = synth_phantom("case_012", 9, shape=(14, 80, 80))
    _with_postprocess(bundle_copy, {"classes": {}})
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as plain:
        raw = plain.predict_volume(volume)
    voxel_ml = math.prod(volume.spacing) / 1000
    _with_postprocess(bundle_copy, {"classes": {"1": {"keep_largest_3d": True, "min_ml": 50 * voxel_ml}}})
    with Segmenter.load(bundle_copy, backend="onnxruntime:fp32") as seg:
        got = seg.predict_volume(volume)
        with pytest.raises(DataError, match="spacing"):
            seg.predict_volume(volume.hu)  # a bare array carries no spacing
        np.testing.assert_array_equal(seg.predict_volume(volume.hu, spacing=volume.spacing), got)
        np.testing.assert_array_equal(seg.predict_volume(volume, volume_filters=False), raw)
    want = filter_components(raw, {1: ComponentRule(True, 50)}, volume=True, reference=True)
    np.testing.assert_array_equal(got, want)
    assert (raw == 1).any() and (got == 1).any()


def test_removed_to_is_written_only_where_used_and_reaches_the_rules():
    three = PostprocessOptions(classes={1: ClassPostprocess(min_pixels=4), 2: ClassPostprocess(True, 8, False, 0.5, 1)})
    raw = three.to_dict()
    assert "removed_to" not in raw["classes"]["1"] and raw["classes"]["2"]["removed_to"] == 1
    assert PostprocessOptions.from_dict(raw, 3) == three
    assert three.slice_rules((64, 64), (32, 32)) == {1: ComponentRule(False, 16, 0), 2: ComponentRule(True, 32, 1)}
    assert three.volume_rules((1.0, 1.0, 1.0))[2] == ComponentRule(False, 500, 1)


def test_a_filter_size_beyond_int64_removes_every_component():
    """1e15 model pixels at 8192x8192 (16384 output pixels each) and 1 mL of 1e-6 mm voxels (1e21
    of them) do not fit int64: the filter must still remove every component, never switch off."""
    huge = PostprocessOptions(classes={1: ClassPostprocess(min_pixels=10**15, min_ml=1.0)})
    slice_rule = huge.slice_rules((8192, 8192), (64, 64))[1]
    volume_rule = huge.volume_rules((1e-6, 1e-6, 1e-6))[1]
    assert slice_rule.min_size > 8192 * 8192 and volume_rule.min_size >= 2**62
    labels = np.zeros((3, 40, 40), np.uint8)
    labels[:, 5:35, 5:35] = 1  # one component of 2700 voxels, 900 pixels per slice
    assert not filter_components(labels, {1: slice_rule}).any()
    assert not filter_components(labels, {1: volume_rule}, volume=True).any()
    # the largest filter size that fits int64 is kept as it is
    assert huge.volume_rules((1e-5, 1e-5, 1e-5))[1].min_size < 2**63


@pytest.mark.parametrize("spacing", [(1e-200, 1e-200, 1e-200), (1e-102, 1e-102, 1e-102), (1e300, 1e300, 1.0),
                                     (-1.0, -1.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0)])
def test_a_spacing_whose_voxel_volume_is_not_a_normal_number_is_refused(spacing):
    post = PostprocessOptions(classes={1: ClassPostprocess(min_ml=1.0)})
    with pytest.raises(DataError, match="whose voxel volume is a normal number") as caught:
        post.volume_rules(spacing)
    assert "\n" not in str(caught.value)
    # (1e-100)^3 / 1000 = 1e-303 mL is small but a normal number
    assert post.volume_rules((1e-100, 1e-100, 1e-100))[1].min_size > 8192**3


@pytest.mark.parametrize("classes", [{}, {1: ClassPostprocess(keep_largest_3d=True)}], ids=["no-3d-filter", "3d-filter"])
@pytest.mark.parametrize("labels, message", [
    (np.zeros((2, 3, 3), np.int64), r"labels must be uint8, got dtype int64"),
    (np.zeros((3, 3), np.uint8), r"labels must be a \(Z, Y, X\) volume with every side >= 1, got shape \(3, 3\)"),
])
def test_filter_volume_refuses_what_is_not_a_uint8_volume_with_or_without_3d_filters(bundle_dir, classes, labels,
                                                                                      message):
    """Its annotation promises uint8 in and out: without a 3-D filter it returned any input unchanged."""
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as seg:
        seg.postprocess = PostprocessOptions(classes=classes)
        with pytest.raises(DataError, match=f"^{message}$"):
            seg.filter_volume(labels, (1.0, 1.0, 1.0))
        good = np.zeros((2, 3, 3), np.uint8)
        assert (seg.filter_volume(good, (1.0, 1.0, 1.0)) is good) == (not classes)
