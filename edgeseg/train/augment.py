"""Batch augmentation on tensors: flips, rotation and scale, window and intensity jitter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseg.spec import PreprocessSpec


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms; each is applied to a sample with probability ``p``."""

    p: float = 0.25
    flip: bool = True
    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    window_low: tuple[float, float] = (-0.7, 0.15)
    window_high: tuple[float, float] = (0.85, 1.6)
    gamma: tuple[float, float] = (0.7, 1.5)
    contrast: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.1
    noise_std: float = 0.03


class BatchAugmenter:
    """Applies random transforms to (B, 1, H, W) images and (B, H, W) labels together.

    Intensity transforms work in window units (0 = window low, 1 = window high), so they mean
    the same for every spec. Re-mapping the window ends to a low end drawn from ``window_low``
    and a high end from ``window_high`` imitates slices exported by another hospital with
    another window and read as this one, which a model trained on one fixed mapping otherwise
    fails on: [-160, 240] HU exported to 8 bits and read as [0, 255] is low -0.63, high 0.94.
    """

    def __init__(self, spec: PreprocessSpec, config: AugmentConfig = AugmentConfig()) -> None:
        self.config = config
        self.mean, self.std = spec.mean, spec.std

    def __call__(self, images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.config.flip:
            images, labels = self._flip(images, labels, gen)
        images, labels = self._affine(images, labels, gen)
        return self._intensity(images, gen), labels

    def _chance(self, n: int, gen: torch.Generator) -> Tensor:
        return torch.rand(n, generator=gen) < self.config.p

    def _uniform(self, n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    def _flip(self, images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        # Only the chosen slices are flipped (and copied): most of a batch stays as it is.
        images, labels = images.clone(), labels.clone()
        for dim in (-1, -2):
            rows = _rows(self._chance(images.shape[0], gen))
            if len(rows):
                images[rows] = images[rows].flip(dim)
                labels[rows] = labels[rows].flip(dim)
        return images, labels

    def _affine(self, images: Tensor, labels: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n, c = images.shape[0], self.config
        active = self._chance(n, gen)
        angle = self._uniform(n, -c.rotate_deg, c.rotate_deg, gen) * math.pi / 180 * active
        scale = torch.where(active, self._uniform(n, *c.scale, gen), torch.ones(n))
        rows = _rows(active)
        if not len(rows):
            return images, labels
        # Only the slices that move are resampled; the others would go through an identity grid.
        angle, scale, k = angle[rows], scale[rows], len(rows)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(k)], 1), torch.stack([sin, cos, torch.zeros(k)], 1)], 1)
        grid = F.affine_grid(theta, [k, *images.shape[1:]], align_corners=False)
        # Outside the slice is air: the normalised value of the window's low end.
        air = (0.0 - self.mean) / self.std
        warped = F.grid_sample(images[rows] - air, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + air
        warped_labels = F.grid_sample(labels[rows, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        images, labels = images.clone(), labels.clone()
        images[rows] = warped
        labels[rows] = warped_labels[:, 0].round().to(labels.dtype)
        return images, labels

    def _intensity(self, images: Tensor, gen: torch.Generator) -> Tensor:
        n, c = images.shape[0], self.config
        shape = (n, 1, 1, 1)
        u = images * self.std + self.mean  # window units, [0, 1] inside the window
        on = self._chance(n, gen).view(shape)
        low = torch.where(on, self._uniform(n, *c.window_low, gen).view(shape), torch.zeros(shape))
        high = torch.where(on, self._uniform(n, *c.window_high, gen).view(shape), torch.ones(shape))
        u = ((u - low) / (high - low)).clamp(0, 1)
        # The random numbers are drawn for the whole batch, as they always were; the work is
        # done on the slices a transform was chosen for.
        rows = _rows(self._chance(n, gen))
        gamma = torch.exp(self._uniform(n, math.log(c.gamma[0]), math.log(c.gamma[1]), gen)).view(shape)
        if len(rows):
            u[rows] = u[rows].clamp_min(0).pow(gamma[rows])
        rows = _rows(self._chance(n, gen))
        contrast = self._uniform(n, *c.contrast, gen).view(shape)
        bright = self._uniform(n, -c.brightness, c.brightness, gen).view(shape)
        if len(rows):
            u[rows] = (u[rows] - 0.5) * contrast[rows] + 0.5 + bright[rows]
        rows = _rows(self._chance(n, gen))
        sigma = self._uniform(n, 0, c.noise_std, gen).view(shape)
        if len(rows):
            u[rows] = u[rows] + sigma[rows] * torch.randn((len(rows), *u.shape[1:]), generator=gen)
        return (u - self.mean) / self.std


def _rows(chosen: Tensor) -> Tensor:
    """Indices of the True entries of a (B,) or (B, 1, 1, 1) mask."""
    return chosen.reshape(-1).nonzero().reshape(-1)
