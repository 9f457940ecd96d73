"""The pooled Dice scores of training validation and the export gate, against pure-Python
loops and hand-computed per-class values."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.metrics import mean_class_dice, per_case_dice


def _loop_dice(pred, truth, cls) -> float:
    """Dice of class ``cls`` counted element by element in plain Python."""
    both = only_pred = only_truth = 0
    for p, t in zip(np.asarray(pred).ravel().tolist(), np.asarray(truth).ravel().tolist()):
        both += p == cls and t == cls
        only_pred += p == cls and t != cls
        only_truth += p != cls and t == cls
    total = 2 * both + only_pred + only_truth
    return 1.0 if total == 0 else 2 * both / total


def _loop_per_case(pred, truth, cases, num_classes) -> list[float]:
    out = []
    for cls in range(1, num_classes):
        scores = []
        for case in sorted(set(cases.tolist())):
            rows = [i for i, c in enumerate(cases.tolist()) if c == case]
            scores.append(_loop_dice(pred[rows], truth[rows], cls))
        out.append(sum(scores) / len(scores))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_mean_class_dice_matches_a_python_loop_on_random_label_maps(seed):
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 5))
    a = rng.integers(0, num_classes, size=(3, 9, 7), dtype=np.uint8)
    b = np.where(rng.random(a.shape) < 0.3, rng.integers(0, num_classes, size=a.shape), a).astype(np.uint8)
    oracle = sum(_loop_dice(a, b, c) for c in range(1, num_classes)) / (num_classes - 1)
    assert mean_class_dice(a, b, num_classes) == pytest.approx(oracle, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_per_case_dice_matches_a_python_loop_on_random_stacks(seed):
    rng = np.random.default_rng(100 + seed)
    num_classes = int(rng.integers(2, 4))
    pred = rng.integers(0, num_classes, size=(10, 6, 6), dtype=np.uint8)
    truth = np.where(rng.random(pred.shape) < 0.4, 0, pred).astype(np.uint8)
    cases = rng.integers(0, 3, size=10)
    assert per_case_dice(pred, truth, cases, num_classes) == pytest.approx(
        _loop_per_case(pred, truth, cases, num_classes), abs=1e-12)


def test_per_class_values_computed_by_hand():
    # Two cases of one 1x4 slice each, classes 1 and 2.
    pred = np.array([[[1, 1, 2, 0]], [[0, 0, 0, 0]]], dtype=np.uint8)
    truth = np.array([[[1, 0, 2, 2]], [[0, 0, 0, 2]]], dtype=np.uint8)
    cases = np.array([0, 1])
    # class 1: case 0 |P|=2 |T|=1 overlap 1 -> 2/3; case 1 both empty -> 1; mean 5/6
    # class 2: case 0 |P|=1 |T|=2 overlap 1 -> 2/3; case 1 |P|=0 |T|=1 -> 0; mean 1/3
    assert per_case_dice(pred, truth, cases, 3) == pytest.approx([5 / 6, 1 / 3])
    # pooled over both slices: class 1 -> 2/3; class 2 |P|=1 |T|=3 overlap 1 -> 1/2; mean 7/12
    assert mean_class_dice(pred, truth, 3) == pytest.approx(7 / 12)


def test_a_class_absent_from_both_maps_counts_as_one():
    zeros = np.zeros((2, 3, 3), dtype=np.uint8)
    assert mean_class_dice(zeros, zeros, 4) == 1.0
    assert per_case_dice(zeros, zeros, np.array([0, 1]), 2) == [1.0]


def test_per_case_dice_needs_one_case_index_per_slice():
    zeros = np.zeros((2, 3, 3), dtype=np.uint8)
    with pytest.raises(DataError, match="one case index per slice"):
        per_case_dice(zeros, zeros, np.array([0, 1, 2]), 2)
