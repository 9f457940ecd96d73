"""Validation during training: loss and per-case Dice at model resolution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeseg.data.slice_set import SliceSet
from edgeseg.metrics import per_case_dice


@torch.no_grad()
def predict_labels(model, images: np.ndarray, device, autocast: Callable, batch_size: int = 16, loss_fn=None, labels=None):
    """Argmax labels (N, h, w) for pre-processed images, and the mean loss when labels are given."""
    model.eval()
    preds, losses = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device, memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        logits = logits.float()
        preds.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
        if loss_fn is not None and labels is not None:
            y = torch.from_numpy(labels[start : start + batch_size]).long().to(device)
            losses.append(float(loss_fn(logits, y)) * len(x))
    mean_loss = sum(losses) / len(images) if losses else float("nan")
    return np.concatenate(preds), mean_loss


def validate(model, val_set: SliceSet, num_classes: int, device, autocast: Callable, loss_fn) -> dict[str, Any]:
    """Loss and Dice on the validation slices.

    Dice is pooled over each case's slices, then averaged over cases ("Dice per case", as LiTS
    reports it), per foreground class; ``dice`` is the mean over classes. ``pred`` holds the
    argmax labels so callers can score post-processing choices on them.
    """
    pred, loss = predict_labels(model, val_set.images, device, autocast, loss_fn=loss_fn, labels=val_set.labels)
    per_class = per_case_dice(pred, val_set.labels, val_set.case_index, num_classes)
    return {"loss": loss, "dice": float(np.mean(per_class)), "per_class": per_class, "pred": pred}


def choose_postprocess(pred: np.ndarray, val_set: SliceSet, num_classes: int) -> dict[str, Any]:
    """Keep only the largest component per class and slice when that raises validation Dice.

    Like nnU-Net, the choice is made on held-out data rather than assumed: a liver can show
    as two islands in one axial slice, and then the filter would cut one away.
    """
    from edgeseg.kernels import largest_component

    plain = float(np.mean(per_case_dice(pred, val_set.labels, val_set.case_index, num_classes)))
    filtered = largest_component(pred, num_classes)
    largest = float(np.mean(per_case_dice(filtered, val_set.labels, val_set.case_index, num_classes)))
    return {"keep_largest": largest > plain, "val_dice": plain, "val_dice_largest": largest}
