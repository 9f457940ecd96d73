"""Per-class component filters (2-D per slice, 3-D over a volume) against scipy.ndimage.label."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.kernels import ComponentRule, filter_components

RULES = {1: ComponentRule(keep_largest=True), 2: ComponentRule(min_size=4), 3: ComponentRule(True, 6)}
# the same filters with the removed pixels given to another class (9: a label outside the rules)
GIVING = {1: ComponentRule(True, 0, 2), 2: ComponentRule(min_size=4, removed_to=1), 3: ComponentRule(True, 6, 9)}


def _random(shape, fill, seed, classes=4):
    rng = np.random.default_rng(seed)
    lab = rng.integers(1, classes, shape).astype(np.uint8)
    lab[rng.random(shape) >= fill] = 0
    return lab


def _spiral(depth=12, side=41):
    """A square spiral per slice, turned a quarter per slice, with a corkscrew through the
    slices: components that only join late in the scan (unions of two old roots)."""
    lab = np.zeros((depth, side, side), dtype=np.uint8)
    plane = np.zeros((side, side), dtype=np.uint8)
    lo, hi, y, x = 1, side - 2, 1, 1
    while lo < hi:
        plane[lo, lo:hi + 1] = 1
        plane[lo:hi + 1, hi] = 1
        plane[hi, lo + 2:hi + 1] = 1
        plane[lo + 2:hi + 1, lo + 2] = 1
        lo, hi = lo + 4, hi - 4
    for z in range(depth):
        lab[z] = np.rot90(plane, z)
        y, x = (y + 3) % side, (x + 5) % side
        lab[z, y, x] = 2
        if z:
            lab[z - 1, y, x] = 2
    return lab


def _comb(depth=6, side=32):
    """Teeth of class 1 in every slice joined only through the last slice, and a class-3
    checkerboard that is one component per voxel in 3-D but diagonal-connected in 2-D."""
    lab = np.zeros((depth, side, side), dtype=np.uint8)
    lab[:, :, ::2] = 1
    lab[:-1, -1, :] = 0
    lab[-1, -1, :] = 1
    zz, yy, xx = np.indices((depth, 8, 8))
    lab[:, :8, :8][(zz + yy + xx) % 2 == 0] = 3
    return lab


VOLUMES = {
    "random-sparse": _random((9, 23, 31), 0.1, 1),
    "random-half": _random((9, 23, 31), 0.5, 2),
    "random-dense": _random((5, 64, 70), 0.75, 3),
    "spiral": _spiral(),
    "comb-checkerboard": _comb(),
    "single-slice": _random((1, 40, 37), 0.6, 4),
    "single-row": _random((6, 1, 90), 0.5, 5),
    "single-column": _random((6, 50, 1), 0.5, 6),
    "empty-classes": np.where(_random((4, 30, 30), 0.5, 7) == 1, 1, 0).astype(np.uint8),
    "all-background": np.zeros((3, 17, 19), dtype=np.uint8),
    "one-class-everywhere": np.full((3, 17, 19), 2, dtype=np.uint8),
    "out-of-range-class": np.where(_random((4, 20, 20), 0.5, 8) == 2, 9, 1).astype(np.uint8),
}


@pytest.mark.parametrize("rules", [RULES, GIVING], ids=["to-background", "to-another-class"])
@pytest.mark.parametrize("volume", [False, True], ids=["2d", "3d"])
@pytest.mark.parametrize("name", sorted(VOLUMES))
def test_filter_matches_scipy(name, volume, rules):
    lab = VOLUMES[name]
    want = filter_components(lab, rules, volume=volume, reference=True)
    for threads in (1, 3):
        got = filter_components(lab, rules, volume=volume, num_threads=threads)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} with {threads} threads")


@pytest.mark.parametrize("seed", range(8))
def test_random_rules_match_scipy(seed):
    rng = np.random.default_rng(100 + seed)
    lab = _random(tuple(int(v) for v in rng.integers(1, 24, 3)), float(rng.random()), seed)
    rules = {c: ComponentRule(bool(rng.integers(2)), int(rng.integers(0, 12))) for c in range(1, 4)}
    for volume in (False, True):
        np.testing.assert_array_equal(filter_components(lab, rules, volume=volume, num_threads=2),
                                      filter_components(lab, rules, volume=volume, reference=True))


def test_3d_keeps_the_largest_volume_not_the_largest_slice():
    lab = np.zeros((5, 10, 10), dtype=np.uint8)
    lab[0, :6, :6] = 1            # 36 voxels, one slice
    lab[1:5, 7:10, 7:10] = 1      # 36 voxels over four slices: ties go to the first in raster order
    lab[1:5, 0:2, 8:10] = 1       # 16 voxels
    out = filter_components(lab, {1: ComponentRule(keep_largest=True)}, volume=True)
    assert out[0].sum() == 36 and out[1:].sum() == 0
    lab[4, 9, 6] = 1              # now the column block has 37 voxels
    out = filter_components(lab, {1: ComponentRule(keep_largest=True)}, volume=True)
    assert out[0].sum() == 0 and int(out.sum()) == 37


def test_diagonal_voxels_are_separate_in_3d_but_joined_in_2d():
    lab = np.zeros((2, 3, 3), dtype=np.uint8)
    lab[0, 0, 0] = lab[0, 1, 1] = lab[1, 1, 1] = 1
    kept_3d = filter_components(lab, {1: ComponentRule(min_size=2)}, volume=True)
    assert kept_3d[0, 0, 0] == 0 and kept_3d[0, 1, 1] == 1 and kept_3d[1, 1, 1] == 1
    kept_2d = filter_components(lab, {1: ComponentRule(min_size=2)})
    assert kept_2d[0].sum() == 2 and kept_2d[1].sum() == 0


def test_classes_without_rules_are_untouched():
    lab = VOLUMES["random-half"]
    out = filter_components(lab, {1: ComponentRule(keep_largest=True)}, volume=True)
    np.testing.assert_array_equal(out[lab != 1], lab[lab != 1])
    assert (out == 1).sum() < (lab == 1).sum()


@pytest.mark.parametrize("labels, rules, match", [
    (np.zeros((2, 3, 3), np.int32), RULES, "uint8"),
    (np.zeros((3, 3), np.uint8), RULES, "volume"),
    (np.zeros((2, 0, 3), np.uint8), RULES, "side"),
    (np.zeros((2, 3, 3), np.uint8), {1: (True, 0)}, "ComponentRule"),
    (np.zeros((2, 3, 3), np.uint8), {256: ComponentRule(True)}, "classes"),
    (np.zeros((2, 3, 3), np.uint8), {1: ComponentRule(False, -1)}, "min_size"),
    (np.zeros((2, 3, 3), np.uint8), {1: ComponentRule(True, 0, 1)}, "removed_to of class 1"),
    (np.zeros((2, 3, 3), np.uint8), {1: ComponentRule(True, 0, 256)}, "removed_to"),
    (np.zeros((2, 3, 3), np.uint8), {1: ComponentRule(True, 0, True)}, "removed_to"),
])
def test_bad_input_is_refused(labels, rules, match):
    with pytest.raises(DataError, match=match):
        filter_components(labels, rules, volume=True)



@pytest.mark.parametrize("seed", range(6))
def test_random_rules_giving_pixels_away_match_scipy(seed):
    rng = np.random.default_rng(200 + seed)
    lab = _random(tuple(int(v) for v in rng.integers(1, 24, 3)), float(rng.random()), seed)
    rules = {c: ComponentRule(bool(rng.integers(2)), int(rng.integers(0, 12)),
                              int(rng.choice([t for t in (0, 1, 2, 3, 9) if t != c]))) for c in range(1, 4)}
    for volume in (False, True):
        np.testing.assert_array_equal(filter_components(lab, rules, volume=volume, num_threads=2),
                                      filter_components(lab, rules, volume=volume, reference=True))


@pytest.mark.parametrize("volume", [False, True], ids=["2d", "3d"])
def test_given_pixels_never_join_the_receiving_class_in_the_same_call(volume):
    """Two touching 2-pixel islands of classes 1 and 2, each removed (under 3 pixels) to the
    other: they swap. Had the first given its pixels before the second was labelled, class 2
    would hold one 4-pixel component there and keep it."""
    lab = np.zeros((1, 6, 8), dtype=np.uint8)
    lab[0, 1, 1:3] = 1
    lab[0, 1, 3:5] = 2
    lab[0, 4, 0:6] = 1                           # a large class-1 component, kept
    rules = {1: ComponentRule(min_size=3, removed_to=2), 2: ComponentRule(min_size=3, removed_to=1)}
    want = lab.copy()
    want[0, 1, 1:3], want[0, 1, 3:5] = 2, 1
    for reference in (False, True):
        np.testing.assert_array_equal(filter_components(lab, rules, volume=volume, reference=reference), want)


def test_a_rule_for_background_is_ignored():
    lab = VOLUMES["random-half"]
    rules = {0: ComponentRule(), 1: ComponentRule(keep_largest=True)}
    np.testing.assert_array_equal(filter_components(lab, rules), filter_components(lab, {1: rules[1]}))
