"""Test-time mirroring: the network runs on flipped copies of each batch, and the class
probabilities, flipped back, are averaged (nnU-Net predicts this way by default).

Modes (``--tta``): ``none`` (one pass), ``flip`` (the slice and its left-right mirror, 2 passes)
and ``mirror`` (also the up-down mirror and both, 4 passes). A model trained with flip
augmentation (edgeseg's default) gives similar but not identical logits on a mirrored slice;
averaging the four views smooths the borders of uncertain regions. It multiplies the network's
time by the number of passes and leaves pre- and post-processing as they are. It is a choice of
the process that predicts, not of the bundle: the export gate and ``Segmenter.logits`` always
see one pass. The C API's ``es_set_tta`` (csrc/runtime/mirror.c) does the same float32 steps.

A region model (``regions`` in the manifest's model; edgeseg.models.regions) outputs class
scores made from sigmoid region logits, which softmax would average as something else: its
passes average each region's sigmoid, as nnU-Net does, and the mean goes back to region logits
(``log p - log(1 - p)``, so the mean exceeds 0.5 exactly where the logit is > 0) and through the
same scores head, whose argmax is nnU-Net's decoding of the averaged regions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeseg.errors import DataError

# mode -> the axes of an NCHW batch each pass flips (() is the slice as it is)
TTA_MODES: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flip": ((), (3,)),
    "mirror": ((), (3,), (2,), (2, 3)),
}


def check_tta(mode: str) -> str:
    """``mode`` if it is a test-time mirroring mode, else a one-line DataError."""
    if not isinstance(mode, str) or mode not in TTA_MODES:
        raise DataError(f"test-time augmentation must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def mirrored_logits(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, mode: str,
                    regions: bool = False) -> np.ndarray:
    """``infer(batch)`` for ``none``; otherwise the log of the class probabilities (softmax over
    axis 1) averaged over the passes of ``mode``, float32, NCHW like the logits: the argmax and
    any later resize treat it as logits. With ``regions`` (a region model's scores), the scores
    of the averaged region sigmoids instead (see the module)."""
    passes = TTA_MODES[check_tta(mode)]
    if len(passes) == 1:
        return infer(batch)
    total: np.ndarray | None = None
    for axes in passes:
        view = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
        logits = np.asarray(infer(view), dtype=np.float32)  # used before the next call: runners may reuse it
        if logits.ndim != 4 or logits.shape[1] < 2:
            raise DataError(f"test-time mirroring needs (N, K>=2, H, W) logits, got shape {list(logits.shape)}")
        if axes:
            logits = np.flip(logits, axes)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the NaN that post-processing refuses
            if regions:
                probs = 1 / (1 + np.exp(-region_logits(logits)))
            else:
                shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs = shifted / shifted.sum(axis=1, keepdims=True)
        total = probs if total is None else total + probs
    mean = total / len(passes)
    if regions:
        tiny = np.finfo(np.float32).tiny
        with np.errstate(invalid="ignore"):
            logit = np.log(np.maximum(mean, tiny)) - np.log(np.maximum(1 - mean, tiny))
        return region_scores(logit.astype(np.float32))
    return np.log(np.maximum(mean, np.finfo(np.float32).tiny), dtype=np.float32)


def region_logits(scores: np.ndarray) -> np.ndarray:
    """The region logits (N, K, H, W) of a region model's class scores (N, K + 1, H, W), float32:
    ``r_k = s_k - max(0, s_1, ..., s_{k-1})`` (edgeseg.models.regions, in numpy)."""
    top = np.zeros_like(scores[:, :1])
    out = np.empty_like(scores[:, 1:])
    for k in range(1, scores.shape[1]):
        out[:, k - 1:k] = scores[:, k:k + 1] - top
        top = np.maximum(top, scores[:, k:k + 1])
    return out


def region_scores(r: np.ndarray) -> np.ndarray:
    """A region model's class scores from region logits: ``s_0 = 0``, ``s_k = r_k + max(0, s_1,
    ..., s_{k-1})`` (edgeseg.models.regions, in numpy), float32."""
    top = np.zeros_like(r[:, :1])
    out = np.empty((r.shape[0], r.shape[1] + 1, *r.shape[2:]), dtype=np.float32)
    out[:, :1] = 0
    for k in range(r.shape[1]):
        out[:, k + 1:k + 2] = r[:, k:k + 1] + top
        top = np.maximum(top, out[:, k + 1:k + 2])
    return out
