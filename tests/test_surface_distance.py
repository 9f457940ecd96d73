"""HD95's two ways of finding surface distances (the feature transform of the masks' box and a
KD-tree over the surface voxels) against scipy's distance transform and a brute-force oracle, on
anisotropic and sheared grids; and the memory HD95 takes when the masks' box is the whole volume."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from edgeseg.metrics import hd95
from edgeseg.metrics.surface_distance import surface_distances
from tests.test_metrics_hd95 import random_mask_pair, surface_oracle

METHODS = ("feature_transform", "kd_tree")


def nearest_oracle(a: np.ndarray, b: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Distance in mm of each surface voxel of ``a`` to the nearest surface voxel of ``b``, by
    measuring every pair (column k of ``grid``: the step of array axis k)."""
    points_a = np.argwhere(surface_oracle(a)) @ grid.T
    points_b = np.argwhere(surface_oracle(b)) @ grid.T
    return np.array([np.sqrt(((points_b - point) ** 2).sum(axis=1)).min() for point in points_a])


def hd95_oracle(a: np.ndarray, b: np.ndarray, grid: np.ndarray) -> float:
    return float(max(np.percentile(nearest_oracle(a, b, grid), 95), np.percentile(nearest_oracle(b, a, grid), 95)))


def scipy_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """What HD95 took before it bounded its memory: scipy's distances over the whole array."""
    return ndimage.distance_transform_edt(~surface_oracle(b), sampling=spacing)[surface_oracle(a)]


def sheared_grid(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """Column k: the step of array axis k in mm, tilted off the orthogonal by up to ~30 degrees."""
    grid = np.diag(rng.uniform(0.25, 4.0, size=ndim)) + np.triu(rng.uniform(-0.6, 0.6, size=(ndim, ndim)), 1)
    return np.vstack([grid, np.zeros((3 - ndim, ndim))]) if ndim < 3 else grid


def _pairs(count: int, offset: int):
    for seed in range(count):
        ndim = 2 if seed % 2 else 3
        yield random_mask_pair(offset + seed, ndim=ndim, largest=10 if ndim == 2 else 7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(60))
def test_both_ways_give_scipys_distances_on_anisotropic_grids(seed, method):
    a, b, spacing = next(_pairs(1, 3000 + seed))
    if not a.any() or not b.any():
        assert hd95(a, b, spacing) == (0.0 if not a.any() and not b.any() else pytest.approx(math.nan, nan_ok=True))
        return
    forward, backward = surface_distances(a, b, np.diag(spacing), orthogonal=True, method=method)
    np.testing.assert_allclose(np.sort(forward), np.sort(scipy_distances(a, b, spacing)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sort(backward), np.sort(scipy_distances(b, a, spacing)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sort(forward), np.sort(nearest_oracle(a, b, np.diag(spacing))), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(60))
def test_sheared_grid_distances_match_brute_force(seed):
    a, b, _ = next(_pairs(1, 4000 + seed))
    grid = sheared_grid(np.random.default_rng(seed), a.ndim)
    if not a.any() or not b.any():
        expected = 0.0 if not a.any() and not b.any() else math.nan
        assert hd95(a, b, grid=grid) == pytest.approx(expected, nan_ok=True)
        return
    forward, backward = surface_distances(a, b, grid, orthogonal=False)
    np.testing.assert_allclose(np.sort(forward), np.sort(nearest_oracle(a, b, grid)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sort(backward), np.sort(nearest_oracle(b, a, grid)), rtol=0, atol=1e-9)
    assert hd95(a, b, grid=grid) == pytest.approx(hd95_oracle(a, b, grid), rel=0, abs=1e-9)


def test_feature_transform_refuses_a_sheared_grid():
    a = np.ones((3, 3), dtype=bool)
    with pytest.raises(ValueError, match="orthogonal grids only"):
        surface_distances(a, a, np.array([[1.0, 0.5], [0.0, 1.0]]), orthogonal=False, method="feature_transform")


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius ** 2


def _traced_peak(function):
    tracemalloc.start()
    try:
        return function(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_hd95_of_masks_in_opposite_corners_takes_a_fraction_of_the_volume():
    """A prediction in one corner, the truth in the other: their box is the whole volume. The
    distance transform of that box took 48 bytes a voxel (24 times the int16 CT volume the masks
    come from); the surfaces are small, and the memory should be less than the volume itself."""
    shape = (192, 192, 192)
    spacing = (2.5, 0.8, 0.8)
    pred, truth = _ball(shape, (20, 20, 20), 12), _ball(shape, (170, 172, 168), 12)
    expected = hd95_oracle(pred, truth, np.diag(spacing))

    value, peak = _traced_peak(lambda: hd95(pred, truth, spacing))

    assert value == pytest.approx(expected, rel=0, abs=1e-9)
    int16_volume = 2 * pred.size
    assert peak < int16_volume, f"HD95 peaked at {peak / int16_volume:.2f}x the int16 volume"



@pytest.mark.parametrize("seed", range(12))
def test_kd_tree_distances_do_not_depend_on_slabs_or_query_chunks(seed, monkeypatch):
    """Large volumes find surfaces slab by slab and query the tree in chunks; with slabs of one
    or two planes and chunks of a few points, every slab edge and chunk edge falls inside the
    masks, and the distances must still be the brute-force ones."""
    from edgeseg.metrics import surface_distance

    rng = np.random.default_rng(5000 + seed)
    shape = tuple(int(n) for n in rng.integers(4, 9, size=3))
    a, b = rng.random(shape) < rng.uniform(0.3, 0.8), rng.random(shape) < rng.uniform(0.3, 0.8)
    spacing = np.diag(rng.uniform(0.5, 3.0, size=3))
    monkeypatch.setattr(surface_distance, "SLAB_VOXELS", shape[1] * shape[2] * int(rng.integers(1, 3)))
    monkeypatch.setattr(surface_distance, "QUERY_CHUNK", int(rng.integers(1, 8)))
    forward, backward = surface_distances(a, b, spacing, orthogonal=True, method="kd_tree")
    np.testing.assert_allclose(np.sort(forward), np.sort(nearest_oracle(a, b, spacing)), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.sort(backward), np.sort(nearest_oracle(b, a, spacing)), rtol=0, atol=1e-9)
