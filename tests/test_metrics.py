"""Dice / IoU against hand-computed values, class_metrics per case vs per slice, and summarise."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.metrics import class_metrics, dice, hd95, iou, summarise
from tests.test_metrics_hd95 import hd95_oracle


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[c == "#" for c in row] for row in rows])


def test_dice_and_iou_of_two_4x4_masks_with_half_overlap():
    a = _mask(["##..", "##..", "....", "...."])
    b = _mask([".##.", ".##.", "....", "...."])
    # |A| = |B| = 4, |A∩B| = 2, |A∪B| = 6
    assert dice(a, b) == pytest.approx(2 * 2 / 8)
    assert iou(a, b) == pytest.approx(2 / 6)


def test_dice_and_iou_of_3x3_and_2x2_touching_in_one_pixel():
    a = _mask(["###.", "###.", "###.", "...."])
    b = _mask(["....", "....", "..##", "..##"])
    # |A| = 9, |B| = 4, overlap only at (2, 2)
    assert dice(a, b) == pytest.approx(2 / 13)
    assert iou(a, b) == pytest.approx(1 / 12)
    assert dice(b, a) == dice(a, b)


def test_dice_and_iou_in_3d_accept_integer_masks():
    a = np.ones((2, 2, 2), dtype=np.uint8)
    b = np.zeros((2, 2, 2), dtype=np.uint8)
    b[0] = 1
    # |A| = 8, |B| = 4, overlap 4
    assert dice(a, b) == pytest.approx(8 / 12)
    assert iou(a, b) == pytest.approx(0.5)


def test_empty_mask_conventions():
    empty = np.zeros((5, 5), dtype=bool)
    blob = empty.copy()
    blob[1:3, 1:3] = True
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    for pred, truth in ((blob, empty), (empty, blob)):
        assert dice(pred, truth) == 0.0
        assert iou(pred, truth) == 0.0
        assert math.isnan(hd95(pred, truth))


def test_shape_mismatch_and_bad_spacing_raise_data_error():
    with pytest.raises(DataError, match=r"\(4, 4\) vs \(4, 5\)"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    ones = np.ones((4, 4), dtype=bool)
    with pytest.raises(DataError, match="2 positive numbers"):
        hd95(ones, ones, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="2 positive numbers"):
        hd95(ones, ones, spacing=(1.0, -2.0))


def test_class_metrics_pools_the_case_instead_of_averaging_slices():
    truth = np.zeros((2, 8, 8), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[:, 2:6, 2:6] = 1  # 16 voxels on each slice
    pred[0, 2:6, 2:6] = 1  # slice 0 perfect: slice Dice 1
    pred[1, 3:5, 3:5] = 1  # slice 1: 4 voxels inside the truth: slice Dice 8/20 = 0.4
    result = class_metrics(pred, truth, num_classes=3)

    # Per case: 2 * (16 + 4) / (20 + 32); the mean of the slice Dice values would be 0.7.
    assert result[1]["dice"] == pytest.approx(40 / 52)
    assert result[1]["iou"] == pytest.approx(20 / 32)
    assert (result[1]["pred_voxels"], result[1]["truth_voxels"]) == (20, 32)
    # Class 2 appears nowhere: perfect agreement by convention.
    assert result[2] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "pred_voxels": 0, "truth_voxels": 0}


def test_per_slice_hd_averages_slices_whereas_volume_hd_measures_across_them():
    truth = np.zeros((2, 8, 8), dtype=np.uint8)
    truth[:, 2:6, 0:4] = 1
    pred = truth.copy()
    pred[1] = 0
    pred[1, 2:6, 3:7] = 1  # the 4x4 square moved 3 columns right on slice 1
    # Slice 0: HD95 0. Slice 1: a 4x4 square against itself shifted by 3: HD95 3 (by hand:
    # directed distances 0,0,0,0,1,1,2,2,3,3,3,3 -> 95th percentile 3).
    per_slice = class_metrics(pred, truth, 2, per_slice_hd=True)[1]
    assert per_slice["hd95"] == pytest.approx((0.0 + 3.0) / 2)
    # As one volume, the 32 predicted voxels are at 0 (20), 1, 2 and 3 (4 each) from the truth.
    volume = class_metrics(pred, truth, 2)[1]
    assert volume["hd95"] == pytest.approx(3.0)
    assert per_slice["dice"] == volume["dice"] == pytest.approx(2 * 20 / 64)


def test_per_slice_hd_skips_slices_without_the_class_and_undefined_slices():
    truth = np.zeros((4, 8, 8), dtype=np.uint8)
    truth[0, 2:6, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0, 2:6, 3:7] = 1  # HD95 3 as above
    truth[2, 1:3, 1:3] = 1  # missed completely: HD95 undefined on this slice
    # Slices 1 and 3 hold the class in neither mask and must not count as 0.
    assert class_metrics(pred, truth, 2, spacing=(5.0, 1.0, 1.0), per_slice_hd=True)[1]["hd95"] == pytest.approx(3.0)
    assert math.isnan(class_metrics(np.zeros_like(truth), truth, 2, per_slice_hd=True)[1]["hd95"])


def test_class_metrics_rejects_out_of_range_labels_and_bad_num_classes():
    labels = np.zeros((3, 3), dtype=np.int64)
    labels[1, 1] = 4
    with pytest.raises(DataError, match="0..2, found values 0..4"):
        class_metrics(labels, np.zeros_like(labels), num_classes=3)
    with pytest.raises(DataError, match="num_classes"):
        class_metrics(labels, labels, num_classes=1)
    with pytest.raises(DataError, match="integers"):
        class_metrics(labels.astype(float), labels, num_classes=5)
    with pytest.raises(DataError, match="per_slice_hd"):
        class_metrics(labels, labels, num_classes=5, per_slice_hd=True)


def test_summarise_ignores_undefined_hd95_but_counts_it():
    per_case = {
        "case-a": {1: {"dice": 0.8, "iou": 0.6, "hd95": 2.0}},
        "case-b": {1: {"dice": 0.6, "iou": 0.4, "hd95": math.nan}},
        "case-c": {1: {"dice": 1.0, "iou": 1.0, "hd95": 4.0}},
    }
    summary = summarise(per_case, class_names=["background", "liver"])
    liver = summary["liver"]
    assert liver["cases"] == 3
    assert liver["dice"]["mean"] == pytest.approx(0.8)
    assert liver["dice"]["median"] == pytest.approx(0.8)
    assert (liver["dice"]["min"], liver["dice"]["max"]) == (0.6, 1.0)
    assert liver["dice"]["std"] == pytest.approx(math.sqrt((0.0 + 0.04 + 0.04) / 3))
    assert liver["hd95"]["mean"] == pytest.approx(3.0)
    assert liver["hd95"]["n"] == 2
    assert liver["hd95_undefined"] == 1


def test_summarise_leaves_a_class_in_neither_mask_out_of_hd95_but_not_out_of_dice():
    found = np.zeros((4, 12, 12), dtype=np.uint8)
    found[1:3, 2:6, 2:6] = 1
    shifted = np.roll(found, 3, axis=2)  # 3 columns of 2 mm apart: HD95 6 mm
    nothing = np.zeros_like(found)
    per_case = [class_metrics(found, shifted, 2, spacing=(5.0, 1.0, 2.0)),
                class_metrics(nothing, nothing, 2, spacing=(5.0, 1.0, 2.0))]
    summary = summarise(per_case)[1]
    assert summary["absent"] == 1 and summary["hd95_undefined"] == 0
    assert summary["hd95"]["mean"] == pytest.approx(6.0) and summary["hd95"]["n"] == 1
    overlap = 2 * 2 * 4 * 1 / (2 * 2 * 4 * 4)  # one column of four in common: Dice 1/4
    assert summary["dice"]["mean"] == pytest.approx((overlap + 1.0) / 2) and summary["dice"]["n"] == 2


def test_summarise_of_only_undefined_hd95_gives_nan_statistics():
    summary = summarise([{1: {"dice": 0.0, "iou": 0.0, "hd95": math.nan}}])
    assert math.isnan(summary[1]["hd95"]["mean"]) and summary[1]["hd95"]["n"] == 0
    assert summary[1]["hd95_undefined"] == 1
    with pytest.raises(DataError, match="no cases"):
        summarise({})


def test_false_positive_slices_count_predicted_slices_without_truth():
    from edgeseg.metrics import false_positive_slices

    rng = np.random.default_rng(3)
    pred = (rng.random((12, 6, 6)) < 0.05).astype(np.uint8) * rng.integers(1, 3, (12, 6, 6)).astype(np.uint8)
    truth = np.zeros_like(pred)
    truth[3:7, 2:4, 2:4] = 1
    truth[5, 0, 0] = 2
    brute = {c: sum(1 for z in range(12) if (pred[z] == c).any() and not (truth[z] == c).any()) for c in (1, 2)}
    assert false_positive_slices(pred, truth, 3) == brute
    assert false_positive_slices(truth, truth, 3) == {1: 0, 2: 0}
    with pytest.raises(DataError):
        false_positive_slices(pred, truth[:3], 3)


def test_per_slice_hd_takes_the_in_plane_spacing_from_a_3d_spacing():
    truth = np.zeros((2, 8, 10), dtype=np.uint8)
    truth[:, 2:6, 1:5] = 1
    pred = np.roll(truth, 3, axis=2)  # 3 columns right on every slice
    spacing = (5.0, 1.0, 2.0)  # (z, y, x): a column is 2 mm wide, a slice 5 mm thick
    expected = hd95_oracle(pred[0] == 1, truth[0] == 1, spacing[1:])
    assert expected == pytest.approx(6.0)
    assert class_metrics(pred, truth, 2, spacing=spacing, per_slice_hd=True)[1]["hd95"] == pytest.approx(expected)
    assert class_metrics(pred, truth, 2, spacing=spacing[1:], per_slice_hd=True)[1]["hd95"] == pytest.approx(expected)


def test_class_metrics_refuses_a_label_equal_to_num_classes():
    labels = np.zeros((3, 3), dtype=np.uint8)
    labels[0, 0] = 2  # one past the last class of a two-class model
    with pytest.raises(DataError, match="0..1, found values 0..2"):
        class_metrics(labels, np.zeros_like(labels), num_classes=2)
    with pytest.raises(DataError, match="true labels must lie in 0..1"):
        class_metrics(np.zeros_like(labels), labels, num_classes=2)


def test_summarise_statistics_equal_the_statistics_module_on_skewed_values():
    values = [0.2, 0.35, 0.9, 0.95]  # mean 0.6, median 0.625: a median taken as the mean shows
    summary = summarise([{1: {"dice": v, "iou": v / 2, "hd95": 10 * v}} for v in values])[1]
    for metric, scale in (("dice", 1.0), ("iou", 0.5), ("hd95", 10.0)):
        got = summary[metric]
        scaled = [scale * v for v in values]
        assert got["median"] == pytest.approx(statistics.median(scaled))
        assert got["mean"] == pytest.approx(statistics.fmean(scaled))
        assert got["std"] == pytest.approx(statistics.pstdev(scaled))
        assert (got["min"], got["max"], got["n"]) == (pytest.approx(min(scaled)), pytest.approx(max(scaled)), 4)
