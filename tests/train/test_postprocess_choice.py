"""The largest-component filter is chosen on validation Dice, not assumed."""

import numpy as np

from edgeseg.data.slice_set import SliceSet
from edgeseg.train.validate import choose_postprocess


def val_set(truth: np.ndarray) -> SliceSet:
    n = truth.shape[0]
    return SliceSet(np.zeros((n, 1, *truth.shape[1:]), np.float32), truth, np.zeros(n, np.int32), ["a"])


def test_stray_false_positive_makes_the_filter_win():
    truth = np.zeros((1, 16, 16), np.uint8)
    truth[0, 2:10, 2:10] = 1
    pred = truth.copy()
    pred[0, 13:15, 13:15] = 1  # an island away from the organ
    choice = choose_postprocess(pred, val_set(truth), 2)
    assert choice["keep_largest"] is True
    assert choice["val_dice_largest"] == 1.0
    assert choice["val_dice"] == 2 * 64 / (64 + 68)


def test_organ_in_two_islands_keeps_the_filter_off():
    truth = np.zeros((1, 16, 16), np.uint8)
    truth[0, 1:7, 1:7] = 1
    truth[0, 10:14, 10:14] = 1
    choice = choose_postprocess(truth.copy(), val_set(truth), 2)
    assert choice["keep_largest"] is False
    assert choice["val_dice"] == 1.0 and choice["val_dice_largest"] == 2 * 36 / (36 + 52)
