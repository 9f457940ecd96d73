"""Cross-validation figures: per-slice Dice against a brute-force count, fold aggregation against
numpy (`edgeseg cv` end to end: tests/train/test_cv_command.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.evaluate.cross_validation import per_slice_dice, summarise_folds


def _brute_dice(p: np.ndarray, t: np.ndarray) -> float:
    inter = sum(1 for a, b in zip(p.ravel(), t.ravel()) if a and b)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2 * inter / total


def test_per_slice_dice_binary_and_per_class():
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    truth[0, 0:2, 0:2], truth[0, 2:4, 2:4] = 1, 2
    pred[0, 0:2, 0:3], pred[0, 3, 2:4] = 1, 1          # the consolidation called GGO
    truth[1, 1, 1] = 1                                  # slice 2: no class 2 on either side
    rows = per_slice_dice(pred, truth, ["background", "ggo", "consolidation"])
    assert rows[0]["binary"] == pytest.approx(_brute_dice(pred[0] > 0, truth[0] > 0))   # 2*6/(8+8)
    assert rows[0]["binary"] == pytest.approx(0.75)
    assert rows[0]["ggo"] == pytest.approx(2 * 4 / (8 + 4))
    assert rows[0]["consolidation"] == 0.0
    assert (rows[1]["binary"], rows[1]["ggo"], rows[1]["consolidation"]) == (0.0, 0.0, 1.0)


def test_fold_summary_is_the_mean_and_sample_std_of_fold_means():
    rng = np.random.default_rng(0)
    folds = []
    for k, n in enumerate((3, 4, 3)):
        slices = [{"binary": float(b), "ggo": float(g)} for b, g in rng.random((n, 2))]
        folds.append({"fold": k, "epoch": 7, "classes": ["background", "ggo"], "slices": slices})
    summary = summarise_folds(folds)
    means = np.array([[np.mean([s[m] for s in f["slices"]]) for m in ("binary", "ggo")] for f in folds])
    np.testing.assert_allclose([summary["mean"]["binary"], summary["mean"]["ggo"]], means.mean(0))
    np.testing.assert_allclose([summary["std"]["binary"], summary["std"]["ggo"]], means.std(0, ddof=1))
    every = [s["binary"] for f in folds for s in f["slices"]]
    assert summary["pooled"]["binary"] == pytest.approx(np.mean(every)) and summary["slices"] == 10
