"""Validation during training: loss and per-case Dice at model resolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeseg.data.slice_set import SliceSet
from edgeseg.metrics import per_case_dice
from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES


@torch.no_grad()
def predict_labels(model, images: np.ndarray, device, autocast: Callable, batch_size: int = 16, loss_fn=None, labels=None,
                   memory_format: torch.memory_format = torch.channels_last):
    """Argmax labels (N, h, w) for pre-processed images, and the mean loss when labels are given."""
    model.eval()
    preds, losses = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device, memory_format=memory_format)
        with autocast():
            logits = model(x)
        logits = logits.float()
        preds.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
        if loss_fn is not None and labels is not None:
            y = torch.from_numpy(labels[start : start + batch_size]).long().to(device)
            losses.append(float(loss_fn(logits, y)) * len(x))
    mean_loss = sum(losses) / len(images) if losses else float("nan")
    return np.concatenate(preds), mean_loss


def validate(model, val_set: SliceSet, num_classes: int, device, autocast: Callable, loss_fn,
             memory_format: torch.memory_format = torch.channels_last) -> dict[str, Any]:
    """Loss and Dice on the validation slices.

    Dice is pooled over each case's slices, then averaged over cases ("Dice per case", as LiTS
    reports it), per foreground class; ``dice`` is the mean over classes. ``pred`` holds the
    argmax labels so callers can score post-processing choices on them.
    """
    pred, loss = predict_labels(model, val_set.images, device, autocast, loss_fn=loss_fn, labels=val_set.labels,
                                memory_format=memory_format)
    per_class = per_case_dice(pred, val_set.labels, val_set.case_index, num_classes)
    return {"loss": loss, "dice": float(np.mean(per_class)), "per_class": per_class, "pred": pred}


VOLUME_CANDIDATES_ML = (0.1, 1.0, 10.0)


def choose_postprocess(pred: np.ndarray, val_set: SliceSet, num_classes: int,
                       voxel_ml: list[float] | None = None) -> dict[str, Any]:
    """Per class, the component filters that raise validation Dice (pooled per case), as a
    checkpoint's ``postprocess`` (see ``edgeseg.runtime.postprocess_options``).

    Like nnU-Net, the choice is made on held-out data rather than assumed: a liver can show as
    two islands in one axial slice, and lesions are many. For each foreground class, per-slice
    filters (largest component, a minimum size) are tried first, then on top of the best of them
    3-D filters over each validation case's slices taken as one volume (largest 3-D component,
    and with ``voxel_ml``, one voxel's mL at model resolution per case, a minimum volume). A
    filter touches only its class's pixels, so each class is chosen on its own Dice.
    """
    from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions

    def scores(labels: np.ndarray) -> list[float]:
        return per_case_dice(labels, val_set.labels, val_set.case_index, num_classes)

    plain = scores(pred)
    cases = [np.flatnonzero(val_set.case_index == i) for i in np.unique(val_set.case_index)]
    chosen: dict[int, ClassPostprocess] = {}
    for c in range(1, num_classes):
        best, best_dice = ClassPostprocess(), plain[c - 1]
        for keep, pixels in SLICE_CANDIDATES[1:]:
            option = ClassPostprocess(keep_largest=keep, min_pixels=pixels)
            best, best_dice = _better(option, _filtered(pred, c, option, cases, voxel_ml), scores, c, best, best_dice)
        sliced = best
        volume_options = [(True, 0.0)] + [(k, ml) for ml in (VOLUME_CANDIDATES_ML if voxel_ml else ())
                                          for k in (False, True)]
        for keep3d, ml in volume_options:
            option = ClassPostprocess(sliced.keep_largest, sliced.min_pixels, keep3d, ml)
            best, best_dice = _better(option, _filtered(pred, c, option, cases, voxel_ml), scores, c, best, best_dice)
        if best != ClassPostprocess():
            chosen[c] = best
    chosen = _choose_removed_to(pred, chosen, num_classes, lambda labels: float(np.mean(scores(labels))), cases, voxel_ml)
    options = PostprocessOptions(classes=chosen).to_dict()
    final = scores(_apply(pred, options, num_classes, cases, voxel_ml))
    return {**options, "val_dice": float(np.mean(plain)), "val_dice_post": float(np.mean(final)),
            "val_dice_per_class": plain, "val_dice_post_per_class": final}


def validation_voxel_ml(volumes: list, spec) -> list[float] | None:
    """One voxel's millilitres at the model's input size for each validation volume, for the
    3-D minimum-volume candidates; None where some case is a stack of unrelated slices (a slice
    folder), whose spacing is a placeholder and whose slices do not form a volume. ``volumes``
    are Volumes or anything with ``spacing``, ``shape`` (Z, Y, X) and ``contiguous`` (a slice
    store's :class:`~edgeseg.data.store.CaseGeometry`)."""
    if not volumes or not all(getattr(v, "contiguous", False) for v in volumes):
        return None
    rows, cols = spec.size
    shapes = [tuple(v.shape) if hasattr(v, "shape") else v.hu.shape for v in volumes]
    return [float(v.spacing[0] * v.spacing[1] * shape[1] / rows * v.spacing[2] * shape[2] / cols) / 1000.0
            for v, shape in zip(volumes, shapes)]


def _choose_removed_to(pred: np.ndarray, chosen: dict, num_classes: int, mean_dice: Callable, cases, voxel_ml) -> dict:
    """Per filtered class, give the pixels its filters remove to the other foreground class that
    raises the mean Dice over classes, if one does (else they stay background). The filters
    themselves were chosen on their own class's Dice, which ``removed_to`` does not change."""
    from dataclasses import replace

    from edgeseg.runtime.postprocess_options import PostprocessOptions

    def value(options: dict) -> float:
        return mean_dice(_apply(pred, PostprocessOptions(classes=options).to_dict(), num_classes, cases, voxel_ml))

    best_value = value(chosen) if chosen else 0.0
    for c in sorted(chosen):
        for d in range(1, num_classes):
            if d == c:
                continue
            trial = {**chosen, c: replace(chosen[c], removed_to=d)}
            trial_value = value(trial)
            if trial_value > best_value:
                chosen, best_value = trial, trial_value
    return chosen


def _better(option, labels, scores, c, best, best_dice):
    """(option, its Dice of class c) when that beats ``best_dice``, else (best, best_dice)."""
    value = scores(labels)[c - 1]
    return (option, value) if value > best_dice else (best, best_dice)


def _filtered(pred: np.ndarray, c: int, option, cases: list[np.ndarray], voxel_ml) -> np.ndarray:
    from edgeseg.runtime.postprocess_options import PostprocessOptions

    return _apply(pred, PostprocessOptions(classes={c: option}).to_dict(), c + 1, cases, voxel_ml)


def _apply(pred: np.ndarray, options: dict, num_classes: int, cases: list[np.ndarray], voxel_ml) -> np.ndarray:
    """``options`` on model-resolution predictions: per slice, then per case as one volume."""
    from edgeseg.kernels import filter_components
    from edgeseg.runtime.postprocess_options import PostprocessOptions

    parsed = PostprocessOptions.from_dict(options, num_classes)
    size = pred.shape[-2:]
    out = filter_components(pred, parsed.slice_rules(size, size)) if parsed.slice_rules(size, size) else pred.copy()
    if parsed.filters_volume:
        for i, rows in enumerate(cases):
            spacing = None if voxel_ml is None else (voxel_ml[i] * 1000.0, 1.0, 1.0)  # only the product counts
            out[rows] = filter_components(out[rows], parsed.volume_rules(spacing), volume=True)
    return out
