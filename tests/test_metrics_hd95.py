"""HD95 against a brute-force oracle (all pairwise surface distances) and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeseg.metrics import hd95


def surface_oracle(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside the mask or the array (MONAI's surface)."""
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis in range(mask.ndim):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)
    return mask & ~interior[tuple(slice(1, -1) for _ in range(mask.ndim))]


def hd95_oracle(a: np.ndarray, b: np.ndarray, spacing) -> float:
    points_a = np.argwhere(surface_oracle(a)) * np.asarray(spacing, dtype=float)
    points_b = np.argwhere(surface_oracle(b)) * np.asarray(spacing, dtype=float)
    distances = np.sqrt(((points_a[:, None, :] - points_b[None, :, :]) ** 2).sum(axis=-1))
    return float(max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95)))


def random_mask_pair(seed: int, ndim: int, largest: int):
    """Two random masks (any density, possibly empty) on a small random grid and spacing."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, largest + 1, size=ndim))
    a = rng.random(shape) < rng.uniform(0.0, 1.0)
    b = rng.random(shape) < rng.uniform(0.0, 1.0)
    spacing = tuple(float(v) for v in rng.uniform(0.25, 4.0, size=ndim))
    return a, b, spacing


def _check_against_oracle(a, b, spacing):
    result = hd95(a, b, spacing)
    if not a.any() and not b.any():
        assert result == 0.0
    elif not a.any() or not b.any():
        assert math.isnan(result)
    else:
        assert result == pytest.approx(hd95_oracle(a, b, spacing), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("seed", range(120))
def test_hd95_2d_matches_brute_force(seed):
    _check_against_oracle(*random_mask_pair(seed, ndim=2, largest=10))


@pytest.mark.parametrize("seed", range(80))
def test_hd95_3d_matches_brute_force(seed):
    _check_against_oracle(*random_mask_pair(1000 + seed, ndim=3, largest=6))


def _blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Smoothed noise gives compact, organ-like blobs with real interiors, unlike raw noise
    # where every voxel is surface.
    noise = rng.random(shape)
    for axis in range(len(shape)):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    return noise > np.quantile(noise, 0.6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("shape", "spacing"), [((24, 20), (0.7, 1.9)), ((10, 14, 12), (3.0, 0.8, 0.8))]
)
def test_hd95_of_blobs_with_anisotropic_spacing_matches_brute_force(seed, shape, spacing):
    rng = np.random.default_rng(seed)
    a, b = _blobs(rng, shape), _blobs(rng, shape)
    assert hd95(a, b, spacing) == pytest.approx(hd95_oracle(a, b, spacing), rel=1e-9)


def _two_squares_offset_by_three_columns() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((20, 24), dtype=bool)
    b = np.zeros_like(a)
    a[5:15, 5:15] = True
    b[5:15, 8:18] = True
    return a, b


def test_squares_offset_by_three_pixels_are_three_apart():
    a, b = _two_squares_offset_by_three_columns()
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(b, a) == pytest.approx(3.0)


def test_offset_is_measured_in_mm_along_the_shifted_axis():
    a, b = _two_squares_offset_by_three_columns()
    # The shift is along axis 1: 3 columns of 2 mm = 6 mm; rows of 2 mm leave it at 3 mm.
    assert hd95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, b, spacing=(2.0, 1.0)) == pytest.approx(3.0)


def test_cubes_offset_by_three_slices_are_three_apart():
    a = np.zeros((14, 10, 10), dtype=bool)
    b = np.zeros_like(a)
    a[2:8, 2:8, 2:8] = True
    b[5:11, 2:8, 2:8] = True
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2.5, 1.0, 1.0)) == pytest.approx(7.5)


def test_identical_masks_touching_the_border_are_zero_apart():
    a = np.zeros((6, 6), dtype=bool)
    a[:, :3] = True
    assert hd95(a, a.copy()) == 0.0


@pytest.mark.parametrize(("spacing", "expected"), [((1.0, 1.0), 0.45), ((2.0, 0.5), 0.225)])
def test_voxel_exposed_only_diagonally_is_not_surface(spacing, expected):
    # A 3 x 5 block in the array's corner, and the same block without voxel (2, 3). Surfaces:
    # the block's 12 outer voxels (the array border counts); without (2, 3), 11 of them plus
    # (1, 3). Each direction has 11 distances 0 and one of a column step, (2, 3) -> (2, 2) and
    # (1, 3) -> (1, 4): the 95th percentile of 12 values is 0.45 of a step, as MONAI gives.
    # Voxel (1, 2) sees the hole only diagonally; counting it as surface (full connectivity)
    # would add a second step-long distance and give a whole step.
    block = np.zeros((7, 7), dtype=bool)
    block[:3, :5] = True
    holed = block.copy()
    holed[2, 3] = False
    assert hd95(block, holed, spacing) == pytest.approx(expected, rel=1e-12)
    assert hd95(holed, block, spacing) == pytest.approx(expected, rel=1e-12)
