"""Dice + cross-entropy loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DiceCELoss(nn.Module):
    """Cross-entropy plus (1 - soft Dice) over the foreground classes.

    Dice is pooled over the whole batch (not averaged per image), so a batch whose slices miss
    the target does not produce a 0/0 term; ``smooth`` keeps it finite when the whole batch is
    empty. Cross-entropy gives well-scaled gradients early; Dice counters class imbalance.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.smooth = smooth

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target)
        probs = logits.softmax(dim=1)[:, 1:]
        onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.ce_weight * ce + self.dice_weight * (1 - dice.mean())

