"""Numpy reference implementation of pre- and post-processing: the oracle for the C kernels.

This module defines the exact semantics; the C kernels must agree with it to 1e-5 for floats and
exactly for label maps.

Conventions:

* Pixel centres: output pixel ``j`` of an axis resized from ``n_in`` to ``n_out`` samples the
  source at ``x = (j + 0.5) * n_in / n_out - 0.5`` (``align_corners=False``). Bilinear clamps
  ``x`` to ``[0, n_in - 1]``; this equals ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False, antialias=False)`` and ``cv2.resize(..., INTER_LINEAR)`` on float input.
* Area: output pixel ``j`` covers source interval ``[j*s, (j+1)*s)`` with ``s = n_in / n_out``
  and averages the source pixels weighted by their exact overlap. For integer down-scaling this
  is block averaging (``cv2.INTER_AREA``, ``torch`` ``adaptive_avg_pool2d``).
* The HU window is applied before resizing, so a metal artefact cannot bleed into its
  neighbours through interpolation.
* Label maps are resized by nearest neighbour at pixel centres: output ``j`` takes source
  ``floor((j + 0.5) * n_in / n_out)`` (``torch`` ``mode="nearest-exact"``).
* Argmax ties go to the lowest class index.
* ``fit="pad"``: a ``rows x cols`` slice is scaled by ``s = min(size[0] / rows, size[1] / cols)``
  (exact fractions here) to ``round(rows * s) x round(cols * s)``, halves rounded up, placed at
  ``((size[0] - box_rows) // 2, (size[1] - box_cols) // 2)``; the margin is the model value of
  the window's low end for images and background for labels. Post-processing crops that box out
  of the logits before resizing to the slice's shape. A scaled short side under 1 px is refused.
* Non-finite input: NaN or inf HU (float input) and NaN or inf logits raise ``DataError``: no
  scanner produces them, they mean a broken decode upstream, and a dense resampling matrix would
  spread a NaN over whole rows and columns.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from edgeseg.errors import DataError, SpecError
from edgeseg.spec import PreprocessSpec


def resize_matrix(n_in: int, n_out: int, interpolation: str) -> np.ndarray:
    """Dense (n_out, n_in) float64 matrix whose rows hold the resampling weights of one axis."""
    if n_in < 1 or n_out < 1:
        raise SpecError(f"axis sizes must be >= 1, got n_in={n_in} n_out={n_out}")
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    if interpolation == "bilinear":
        x = (np.arange(n_out) + 0.5) * scale - 0.5
        x = np.clip(x, 0.0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = x - i0
        rows = np.arange(n_out)
        np.add.at(m, (rows, i0), 1.0 - w1)
        np.add.at(m, (rows, i1), w1)
    elif interpolation == "area":
        edges = np.arange(n_in + 1, dtype=np.float64)
        for j in range(n_out):
            lo, hi = j * scale, (j + 1) * scale
            overlap = np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo)
            m[j] = np.clip(overlap, 0.0, None) / scale
    else:
        raise SpecError(f"unknown interpolation {interpolation!r}")
    return m


def resize_plane(plane: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize one 2-D float array to ``size`` (rows, cols) in float64."""
    my = resize_matrix(plane.shape[0], size[0], interpolation)
    mx = resize_matrix(plane.shape[1], size[1], interpolation)
    return my @ plane.astype(np.float64) @ mx.T


def fit_box(rows: int, cols: int, size: tuple[int, int], fit: str) -> tuple[int, int, int, int]:
    """(box_rows, box_cols, top, left) of a ``rows x cols`` slice in a model input of ``size``."""
    if fit == "stretch":
        return size[0], size[1], 0, 0
    if fit != "pad":
        raise SpecError(f"unknown fit {fit!r}")
    scale = min(Fraction(size[0], rows), Fraction(size[1], cols))
    exact = (rows * scale, cols * scale)
    if min(exact) < 1:
        raise DataError(f"a {rows}x{cols} slice scales to {float(min(exact)):.3g} px in {size[0]}x{size[1]} (fit=pad)")
    box = [math.floor(v + Fraction(1, 2)) for v in exact]
    return box[0], box[1], (size[0] - box[0]) // 2, (size[1] - box[1]) // 2


def preprocess(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Apply ``spec`` to one slice (H, W) or a stack (N, H, W) of HU; returns (N, 1, h, w)."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise SpecError(f"expected a slice (H, W) or stack (N, H, W), got shape {arr.shape}")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))]
        raise DataError(f"float input holds NaN or inf in slice(s) {bad[:10]}")
    low, high = spec.window
    a, b = spec.scale_offset
    box_rows, box_cols, top, left = fit_box(arr.shape[1], arr.shape[2], spec.size, spec.fit)
    out = np.full((arr.shape[0], 1, *spec.size), low * a + b, dtype=spec.dtype)
    for n, plane in enumerate(arr):
        clipped = np.clip(plane.astype(np.float64), low, high)
        resized = resize_plane(clipped, (box_rows, box_cols), spec.interpolation) * a + b
        out[n, 0, top:top + box_rows, left:left + box_cols] = resized
    return out


def preprocess_labels(labels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """(H, W) or (N, H, W) label maps in the model's geometry: nearest resize into the ``spec.fit``
    box, background around it."""
    arr = np.asarray(labels)
    box_rows, box_cols, top, left = fit_box(arr.shape[-2], arr.shape[-1], spec.size, spec.fit)
    out = np.zeros((*arr.shape[:-2], *spec.size), dtype=arr.dtype)
    out[..., top:top + box_rows, left:left + box_cols] = resize_labels(arr, (box_rows, box_cols))
    return out


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) or (N, H, W) label map at pixel centres."""
    arr = np.asarray(labels)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[None]
    h, w = arr.shape[-2:]
    iy = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    ix = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    out = arr[:, iy][:, :, ix]
    return out[0] if squeeze else out


def argmax_labels(logits: np.ndarray) -> np.ndarray:
    """(N, C, H, W) logits -> (N, H, W) uint8 labels; ties go to the lowest class."""
    return np.argmax(np.asarray(logits, dtype=np.float32), axis=1).astype(np.uint8)


def largest_component(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep, for each foreground class, only its largest 8-connected component in each slice."""
    from scipy import ndimage

    out = np.array(labels, dtype=np.uint8, order="C", copy=True)  # C order: reshape must be a view
    structure = np.ones((3, 3), dtype=bool)
    for plane in out.reshape(-1, *out.shape[-2:]):
        for cls in range(1, num_classes):
            comp, count = ndimage.label(plane == cls, structure=structure)
            if count > 1:
                sizes = np.bincount(comp.ravel())[1:]
                keep = 1 + int(np.argmax(sizes))
                plane[(comp > 0) & (comp != keep)] = 0
    return out


def postprocess(
    logits: np.ndarray, size: tuple[int, int], keep_largest: bool = False, resize: str = "logits",
    fit: str = "stretch",
) -> np.ndarray:
    """(N, C, h, w) logits -> (N, H, W) uint8 labels at ``size``.

    With ``resize="logits"`` (default) logits are resized bilinearly (pixel centres) in float64,
    rounded to float32, then argmaxed, so boundaries are placed at the source resolution rather
    than in blocks of the model's grid. ``resize="labels"`` takes the argmax first and resizes
    the labels by nearest neighbour. ``fit="pad"`` first crops the box a slice of ``size``
    occupied in the model input.
    """
    arr = np.asarray(logits, dtype=np.float32)
    if arr.ndim != 4:
        raise SpecError(f"expected logits (N, C, H, W), got shape {arr.shape}")
    box_rows, box_cols, top, left = fit_box(size[0], size[1], arr.shape[2:], fit)
    arr = arr[:, :, top:top + box_rows, left:left + box_cols]
    if not np.isfinite(arr).all():
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2, 3)))]
        raise DataError(f"logits hold NaN or inf in slice(s) {bad[:10]}")
    n, c = arr.shape[:2]
    if resize == "labels":
        labels = resize_labels(argmax_labels(arr), size)
        return largest_component(labels, c) if keep_largest else labels
    if resize != "logits":
        raise SpecError(f"resize must be 'logits' or 'labels', got {resize!r}")
    resized = np.empty((n, c, *size), dtype=np.float32)
    for i in range(n):
        for k in range(c):
            resized[i, k] = resize_plane(arr[i, k], size, "bilinear")
    labels = argmax_labels(resized)
    return largest_component(labels, c) if keep_largest else labels


def filter_components(labels: np.ndarray, rules: dict, *, volume: bool = False) -> np.ndarray:
    """Per-class component rules with ``scipy.ndimage.label``: each class ``c`` in ``rules``
    (``rules[c].keep_largest``, ``rules[c].min_size``) keeps, per slice of a (N, H, W) stack and
    8-connected, or over the whole (Z, Y, X) volume and 6-connected with ``volume=True``, its
    largest component (equal sizes: the lowest scipy label, i.e. the first in raster order) and
    components of at least ``min_size`` pixels / voxels; removed pixels take ``rules[c].removed_to``.
    Every class's components are found on the labels as given, before any pixel changes."""
    from scipy import ndimage

    out = np.array(labels, dtype=np.uint8, order="C", copy=True)
    structure = ndimage.generate_binary_structure(3 if volume else 2, 1 if volume else 2)
    blocks = [out] if volume else list(out.reshape(-1, *out.shape[-2:]))
    for block in blocks:
        given = block.copy()
        for cls, rule in rules.items():
            if cls == 0 or not (rule.keep_largest or rule.min_size > 1):
                continue
            comp, count = ndimage.label(given == cls, structure=structure)
            if count == 0:
                continue
            sizes = np.bincount(comp.ravel())[1:]
            keep = sizes >= rule.min_size
            if rule.keep_largest:
                keep &= np.arange(count) == int(np.argmax(sizes))
            block[(comp > 0) & ~np.concatenate([[True], keep])[comp]] = rule.removed_to
    return out
