"""Validated pre-processing: HU slices -> model input, in C or with the numpy oracle."""

from __future__ import annotations

import numpy as np

from edgeseg.errors import DataError, SpecError
from edgeseg.kernels import _kernels
from edgeseg.kernels import reference as _reference
from edgeseg.kernels.status import raise_for_status
from edgeseg.kernels.threads import resolve_threads
from edgeseg.spec import PreprocessSpec

INPUT_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.float32))


def preprocess(
    images: np.ndarray,
    spec: PreprocessSpec,
    *,
    reference: bool = False,
    num_threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Window, resize and normalise one slice (H, W) or a stack (N, H, W) of HU for the model.

    Returns a new C-contiguous (N, 1, *spec.size) array of ``spec.dtype`` (N = 1 for a slice).
    Input may be int16, uint16, uint8 or float32 with any strides; other dtypes, other ranks and
    NaN or inf in float input raise ``DataError`` (no scanner produces them; they mean a broken
    decode upstream). With
    ``reference=True`` the numpy oracle computes the same numbers (to 1e-5) much more slowly.
    ``num_threads`` overrides ``edgeseg.kernels.set_num_threads`` for this call. ``out``, a
    C-contiguous array of the result's shape and dtype, receives the result instead of a new
    array (the runtime reuses its input buffers between batches). With ``spec.fit == "pad"`` the
    slices keep their aspect ratio inside ``spec.size`` (``PreprocessSpec.fit_box``); a slice too
    thin to pad raises ``DataError`` naming its shape.

    Example:
        >>> spec = PreprocessSpec(window=(-100.0, 400.0), size=(256, 256))
        >>> preprocess(np.zeros((512, 512), np.int16), spec).shape
        (1, 1, 256, 256)
    """
    if not isinstance(spec, PreprocessSpec):
        raise SpecError(f"spec must be a PreprocessSpec, got {type(spec).__name__}")
    arr = _as_stack(images)
    spec.fit_box(arr.shape[1], arr.shape[2])  # refuses a slice too thin to pad, naming its shape
    threads = resolve_threads(num_threads)
    if reference:
        return _reference.preprocess(arr, spec)
    shape = (arr.shape[0], 1, *spec.size)
    if out is None:
        out = np.empty(shape, dtype=spec.dtype)
    elif not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.dtype(spec.dtype)
              and out.flags.c_contiguous and out.flags.writeable):
        raise DataError(f"out must be a writeable C-contiguous {spec.dtype} array of shape {shape}, got "
                        f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if arr.shape[0] == 0:
        return out
    a, b = spec.scale_offset
    low, high = spec.window
    dst = out.view(np.uint16) if out.dtype == np.float16 else out
    rc = _kernels.preprocess(arr, dst, low, high, a, b, spec.interpolation == "area", spec.fit == "pad", threads)
    raise_for_status(rc, "preprocess", _nan_detail(arr) if rc else "")
    return out



def preprocess_labels(labels: np.ndarray, spec: PreprocessSpec, *, num_threads: int | None = None) -> np.ndarray:
    """(H, W) or (N, H, W) uint8 label maps laid out like ``preprocess`` lays out their slices.

    Labels are resized by nearest neighbour (pixel centres) into the ``spec.fit`` box and, with
    ``fit="pad"``, the margin is background (0), so masks and images share one geometry.
    """
    from edgeseg.kernels.postprocessing import resize_labels

    arr = np.asarray(labels)
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 1:
        raise DataError(f"labels must be (H, W) or (N, H, W) with H, W >= 1, got shape {arr.shape}")
    box_rows, box_cols, top, left = spec.fit_box(*arr.shape[-2:])
    resized = resize_labels(arr, (box_rows, box_cols), num_threads=num_threads)
    if (box_rows, box_cols) == spec.size:
        return resized
    out = np.zeros((*arr.shape[:-2], *spec.size), dtype=np.uint8)
    out[..., top:top + box_rows, left:left + box_cols] = resized
    return out


def _as_stack(images: np.ndarray) -> np.ndarray:
    """(H, W) or (N, H, W) of a supported dtype, native byte order, aligned, itemsize strides."""
    arr = np.asarray(images)
    if arr.dtype.newbyteorder("=") not in INPUT_DTYPES:
        names = ", ".join(str(d) for d in INPUT_DTYPES)
        raise DataError(f"images must be one of {names}, got dtype {arr.dtype}")
    shape = arr.shape
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"images must be a slice (H, W) or a stack (N, H, W), got shape {shape}")
    if arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(f"images must have at least one row and column, got shape {shape}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.aligned or any(s % arr.itemsize for s in arr.strides):
        arr = np.array(arr, order="C", copy=True)  # odd views (byte offsets, record fields): copy
    return arr


def _nan_detail(arr: np.ndarray) -> str:
    bad = [int(i) for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))] if arr.dtype.kind == "f" else []
    return f"float input holds NaN or inf in slice(s) {bad[:10]}{' ...' if len(bad) > 10 else ''}"
