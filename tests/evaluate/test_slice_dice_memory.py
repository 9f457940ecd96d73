"""mean_slice_dice scores a stack slice by slice: the masks it builds are one slice's, not the
whole stack's (two bytes a voxel, as much as an int16 CT), and its value is the mean of a
per-slice Dice computed here with plain numpy."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgeseg.metrics import dice, mean_slice_dice


def _oracle(pred: np.ndarray, truth: np.ndarray, classes) -> float:
    values = []
    for p, t in zip(pred, truth):
        pm = np.zeros(p.shape, bool)
        tm = np.zeros(t.shape, bool)
        for c in classes:
            pm |= p == c
            tm |= t == c
        total = int(pm.sum()) + int(tm.sum())
        values.append(1.0 if total == 0 else 2.0 * int((pm & tm).sum()) / total)
    return float(np.mean(values))


def _stacks(slices: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((slices, size, size), np.uint8)
    for k in range(slices):
        if k % 3:  # a third of the slices hold nothing: Dice 1 there
            y, x = rng.integers(0, size // 2, 2)
            truth[k, y : y + size // 3, x : x + size // 4] = rng.integers(1, 4)
    noise = rng.random(truth.shape)
    pred = np.where(noise < 0.05, rng.integers(0, 4, truth.shape), truth).astype(np.uint8)
    return pred, truth


def _whole_stack(pred: np.ndarray, truth: np.ndarray, classes) -> float:
    """The former computation: masks of both whole stacks, then Dice slice by slice."""
    wanted = np.asarray(list(classes))
    pm, tm = np.isin(pred, wanted), np.isin(truth, wanted)
    return float(np.mean([dice(p, t) for p, t in zip(pm, tm)]))


@pytest.mark.parametrize("classes", [[1], [2], [3], [1, 2], [1, 2, 3], range(1, 4)])
def test_values_equal_a_per_slice_numpy_oracle_and_the_whole_stack_masks(classes):
    pred, truth = _stacks(30, 40, seed=5)
    value = mean_slice_dice(pred, truth, classes)
    assert value == pytest.approx(_oracle(pred, truth, list(classes)), abs=1e-15)
    assert value == _whole_stack(pred, truth, classes)


def test_masks_are_built_one_slice_at_a_time():
    pred, truth = _stacks(200, 128, seed=2)
    expected = _oracle(pred, truth, [1, 2, 3])
    mean_slice_dice(pred[:2], truth[:2], [1])  # first-call caches
    tracemalloc.start()
    try:
        value = mean_slice_dice(pred, truth, [1, 2, 3])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert value == pytest.approx(expected, abs=1e-15)
    # masks of both whole stacks would be two bytes a voxel: twice the (uint8) stack
    assert peak < 0.2 * pred.nbytes, f"peak {peak / pred.nbytes:.2f}x the label stack"
