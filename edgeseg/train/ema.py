"""Exponential moving average of the weights: the model that is validated, saved and exported.

With small batches on a few hundred slices, the weights after any one step carry that step's
noise, and validation Dice jumps by a point or more from epoch to epoch. Averaging the weights
over the last few epochs (Polyak averaging, as timm's ``ModelEmaV2`` and TensorFlow's
``ExponentialMovingAverage`` do) removes most of it at no cost in training time.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_decay(horizon_steps: float) -> float:
    """Per-step decay whose average covers about ``horizon_steps`` steps (1 - 1/horizon)."""
    if horizon_steps <= 1:
        return 0.0
    # beyond 2**53 steps 1 - 1/horizon rounds to 1.0, a decay that never moves (WeightEMA refuses it)
    return min(1.0 - 1.0 / horizon_steps, math.nextafter(1.0, 0.0))


class WeightEMA:
    """A copy of ``model`` whose floating-point parameters and buffers follow it by EMA.

    After the ``n``-th update the copy holds ``w_ema = d_n * w_ema + (1 - d_n) * w`` with
    ``d_n = min(decay, n / (n + 9))`` (n counted from 1), so the first update copies the model
    and early averages are not dominated by the random initialisation. Integer buffers (batch
    norm's ``num_batches_tracked``) are copied. ``decay = 0`` makes the copy follow the model
    exactly.
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = int(updates)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates + 1
        return min(self.decay, (n - 1) / (n + 9))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_state = self.module.state_dict()
        for name, src in model.state_dict().items():
            dst = ema_state[name]
            if dst.is_floating_point():
                dst.lerp_(src.detach().to(dst.dtype), 1.0 - d)
            else:
                dst.copy_(src)
        self.updates += 1

    def load_state_dict(self, state_dict: dict, updates: int) -> None:
        self.module.load_state_dict(state_dict)
        self.updates = int(updates)
