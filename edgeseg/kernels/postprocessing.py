"""Validated post-processing: class logits -> uint8 label maps at the source size."""

from __future__ import annotations

import numpy as np

from edgeseg.errors import DataError
from edgeseg.kernels import _kernels
from edgeseg.kernels import reference as _reference
from edgeseg.kernels.status import raise_for_status
from edgeseg.kernels.threads import resolve_threads
from edgeseg.spec import PreprocessSpec

RESIZE_MODES = ("logits", "labels")
FITS = ("stretch", "pad")
MAX_CLASSES = 256  # labels are uint8


def postprocess(
    logits: np.ndarray,
    size: tuple[int, int],
    *,
    keep_largest: bool = False,
    resize: str = "logits",
    fit: str = "stretch",
    reference: bool = False,
    num_threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """(N, C, h, w) float32/float16 logits -> (N, *size) uint8 labels (argmax, ties to class 0).

    ``resize="logits"`` resizes every class bilinearly (pixel centres) before the argmax, placing
    boundaries at the source resolution; ``"labels"`` takes the argmax at the model's size and
    resizes the labels by nearest neighbour. ``keep_largest`` keeps, per slice, only the largest
    8-connected component of every foreground class. ``fit`` is the ``PreprocessSpec.fit`` the
    model input was made with: ``"pad"`` first takes the box a slice of ``size`` occupied
    (``PreprocessSpec.fit_box``) out of the logits. NaN or inf logits raise ``DataError``.
    With ``reference=True`` the numpy/scipy oracle computes the identical labels. ``out``, a
    C-contiguous uint8 array of shape (N, *size), receives the labels instead of a new array.
    """
    arr = np.asarray(logits)
    if arr.dtype.newbyteorder("=") not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise DataError(f"logits must be float32 or float16, got dtype {arr.dtype}")
    if arr.ndim != 4 or min(arr.shape[1:]) < 1:
        raise DataError(f"logits must be (N, C, H, W) with C, H, W >= 1, got shape {arr.shape}")
    if arr.shape[1] > MAX_CLASSES:
        raise DataError(f"at most {MAX_CLASSES} classes fit uint8 labels, got {arr.shape[1]}")
    out_size = _size_pair(size)
    if resize not in RESIZE_MODES:
        raise DataError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if fit not in FITS:
        raise DataError(f"fit must be one of {FITS}, got {fit!r}")
    if fit == "pad":  # refuses a size too thin to pad, naming it
        PreprocessSpec(size=arr.shape[2:], fit="pad").fit_box(*out_size)
    threads = resolve_threads(num_threads)
    if reference:
        return _reference.postprocess(arr, out_size, keep_largest=bool(keep_largest), resize=resize, fit=fit)
    shape = (arr.shape[0], *out_size)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.uint8
              and out.flags.c_contiguous and out.flags.writeable):
        raise DataError(f"out must be a writeable C-contiguous uint8 array of shape {shape}, got "
                        f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
    if arr.shape[0] == 0:
        return out
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    src = arr.view(np.uint16) if arr.dtype == np.float16 else arr
    rc = _kernels.postprocess(src, out, resize == "labels", bool(keep_largest), fit == "pad", threads)
    raise_for_status(rc, "postprocess", _nonfinite_detail(arr) if rc else "")
    return out


def resize_labels(labels: np.ndarray, size: tuple[int, int], *, num_threads: int | None = None) -> np.ndarray:
    """Nearest (pixel-centre) resize of (H, W) or (N, H, W) uint8 labels to ``size``."""
    arr = np.asarray(labels)
    if arr.dtype != np.uint8:
        raise DataError(f"labels must be uint8, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 1:
        raise DataError(f"labels must be (H, W) or (N, H, W) with H, W >= 1, got shape {arr.shape}")
    out_size = _size_pair(size)
    stack = np.ascontiguousarray(arr.reshape(-1, *arr.shape[-2:]))
    out = np.empty((stack.shape[0], *out_size), dtype=np.uint8)
    if stack.shape[0]:
        raise_for_status(_kernels.resize_labels(stack, out, resolve_threads(num_threads)), "resize_labels")
    return out[0] if arr.ndim == 2 else out


def largest_component(labels: np.ndarray, num_classes: int, *, num_threads: int | None = None) -> np.ndarray:
    """A copy of (H, W) or (N, H, W) uint8 labels where classes 1..num_classes-1 keep only their
    largest 8-connected component per slice (equal sizes: the first in raster order)."""
    arr = np.asarray(labels)
    if arr.dtype != np.uint8:
        raise DataError(f"labels must be uint8, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3) or min(arr.shape[-2:]) < 1:
        raise DataError(f"labels must be (H, W) or (N, H, W) with H, W >= 1, got shape {arr.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 0 <= num_classes <= MAX_CLASSES:
        raise DataError(f"num_classes must be an integer in [0, {MAX_CLASSES}], got {num_classes!r}")
    out = np.array(arr, dtype=np.uint8, order="C", copy=True)
    stack = out.reshape(-1, *out.shape[-2:])
    if stack.shape[0]:
        rc = _kernels.largest_component(stack, int(num_classes), resolve_threads(num_threads))
        raise_for_status(rc, "largest_component")
    return out


def _size_pair(size: tuple[int, int]) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in size)
        ok = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"size must be a pair of positive integers (rows, cols), got {size!r}") from None
    if not ok or rows < 1 or cols < 1:
        raise DataError(f"size must be a pair of positive integers (rows, cols), got {size!r}")
    return rows, cols


def _nonfinite_detail(arr: np.ndarray) -> str:
    bad = [int(i) for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2, 3)))]
    return f"logits hold NaN or inf in slice(s) {bad[:10]}{' ...' if len(bad) > 10 else ''}"
