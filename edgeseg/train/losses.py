"""Dice + cross-entropy loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DiceCELoss(nn.Module):
    """Cross-entropy plus (1 - soft Dice) over the foreground classes.

    Dice is pooled over the whole batch (not averaged per image), so a batch whose slices miss
    the target does not produce a 0/0 term; ``smooth`` keeps it finite when the whole batch is
    empty. Cross-entropy gives well-scaled gradients early; Dice counters class imbalance.
    ``pool_sums``, when given, sums the per-class intersections and areas further (training
    in several processes passes a differentiable sum over the processes, so Dice is pooled
    over the global batch).
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0,
                 pool_sums: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth
        self.pool_sums = pool_sums

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target)
        probs = logits.softmax(dim=1)[:, 1:]
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        if self.pool_sums is not None:
            inter, denom = self.pool_sums(torch.stack([inter, denom])).unbind(0)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())

