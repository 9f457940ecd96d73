"""label_counts: np.bincount's answer without its int64 copy of the whole label map."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgeseg.data.volume import COUNT_STEP, label_counts


@pytest.mark.parametrize("minlength", [0, 3, 300])
def test_counts_equal_bincount(minlength):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=(9, 333, 701)).astype(np.uint8)  # not a multiple of the step
    labels[4, 5, 6] = 255

    np.testing.assert_array_equal(label_counts(labels, minlength), np.bincount(labels.ravel(), minlength=minlength))
    np.testing.assert_array_equal(label_counts(labels[:, ::2]), np.bincount(labels[:, ::2].ravel()))


def test_counting_allocates_a_step_not_the_volume():
    labels = np.ones((64, 256, 256), dtype=np.uint8)
    tracemalloc.start()
    try:
        counts = label_counts(labels, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts.tolist() == [0, labels.size]
    # np.bincount of the whole map converts it to int64 first: 8 bytes per voxel, 32 MB here
    assert peak <= 8 * COUNT_STEP + (1 << 20) < labels.nbytes * 8
