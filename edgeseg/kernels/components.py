"""Validated component filters: per class, the largest connected component and/or components of
a minimum size, per slice (8-connected) or over a whole volume (6-connected); what a class's
filter removes becomes background or another class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from edgeseg.errors import DataError
from edgeseg.kernels import _kernels
from edgeseg.kernels import reference as _reference
from edgeseg.kernels.status import raise_for_status
from edgeseg.kernels.threads import resolve_threads

MAX_CLASSES = 256  # labels are uint8
MAX_VOXELS = 2**31 - 1  # run indices are int32 in the C kernel


class ComponentRule(NamedTuple):
    """What survives of one class's components: its largest only (``keep_largest``; equal sizes
    keep the first in raster order) and/or those of at least ``min_size`` pixels or voxels. The
    pixels of a removed component take the label ``removed_to`` (0: background); components are
    found on the labels as given, so pixels one rule gives to a class never join that class's
    components in the same call."""

    keep_largest: bool = False
    min_size: int = 0
    removed_to: int = 0


def checked_labels(labels: np.ndarray, *, volume: bool) -> np.ndarray:
    """``labels`` as filter_components takes them (the array itself where it is one), or a
    one-line DataError: uint8, (Z, Y, X) with ``volume`` else (H, W) or (N, H, W)."""
    arr = np.asarray(labels)
    if arr.dtype != np.uint8:
        raise DataError(f"labels must be uint8, got dtype {arr.dtype}")
    ndims = (3,) if volume else (2, 3)
    if arr.ndim not in ndims or min(arr.shape[-2:]) < 1:
        what = "a (Z, Y, X) volume" if volume else "(H, W) or (N, H, W)"
        raise DataError(f"labels must be {what} with every side >= 1, got shape {arr.shape}")
    if arr.size > MAX_VOXELS:
        raise DataError(f"labels of {arr.size} voxels exceed the component filter's {MAX_VOXELS}")
    return arr


def filter_components(labels: np.ndarray, rules: Mapping[int, ComponentRule], *, volume: bool = False,
                      reference: bool = False, num_threads: int | None = None) -> np.ndarray:
    """A copy of uint8 ``labels`` with each class in ``rules`` filtered by its rule.

    ``volume=False`` takes (H, W) or (N, H, W) and works slice by slice with 8-connectivity;
    ``volume=True`` takes one (Z, Y, X) volume and joins voxels across slices with
    6-connectivity (faces only). Classes not in ``rules`` (and class 0) are left as they are.
    ``reference=True`` runs the scipy.ndimage oracle instead of the C kernel.
    """
    arr = checked_labels(labels, volume=volume)
    checked = _checked_rules(rules)
    if reference:
        return _reference.filter_components(arr, checked, volume=volume)
    out = np.array(arr, dtype=np.uint8, order="C", copy=True)
    stack = out.reshape(-1, *out.shape[-2:])
    if not checked or stack.shape[0] == 0:
        return out
    num_classes = max(checked) + 1
    keep = np.zeros(num_classes, dtype=np.uint8)
    min_size = np.zeros(num_classes, dtype=np.int64)
    removed_to = np.zeros(num_classes, dtype=np.uint8)
    for cls, rule in checked.items():
        keep[cls], min_size[cls], removed_to[cls] = rule.keep_largest, rule.min_size, rule.removed_to
    rc = _kernels.filter_components(stack, keep, min_size, removed_to, volume, resolve_threads(num_threads))
    raise_for_status(rc, "filter_components")
    return out


def _checked_rules(rules: Mapping[int, ComponentRule]) -> dict[int, ComponentRule]:
    if not isinstance(rules, Mapping):
        raise DataError(f"rules must map class numbers to ComponentRule, got {type(rules).__name__}")
    checked = {}
    for cls, rule in rules.items():
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or not 0 <= cls < MAX_CLASSES:
            raise DataError(f"rule classes must be integers in [0, {MAX_CLASSES - 1}], got {cls!r}")
        if not isinstance(rule, ComponentRule):
            raise DataError(f"the rule of class {cls} must be a ComponentRule, got {rule!r}")
        size = rule.min_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise DataError(f"min_size of class {cls} must be an integer >= 0, got {size!r}")
        to = rule.removed_to
        if isinstance(to, bool) or not isinstance(to, (int, np.integer)) or not 0 <= to < MAX_CLASSES or (to == cls and cls):
            raise DataError(f"removed_to of class {cls} must be another label in [0, {MAX_CLASSES - 1}], got {to!r}")
        checked[int(cls)] = ComponentRule(bool(rule.keep_largest), int(size), int(to))
    return checked
