"""Segmentation losses: Dice + cross-entropy (optionally class-weighted), focal and Tversky terms.

Small, multi-focal lesions (lung infection) are a few percent of a slice: plain cross-entropy
is dominated by background, so a recipe can weight the classes, replace cross-entropy by the
focal loss (which down-weights pixels already classified well) or replace Dice by the Tversky
index (which penalises missed lesion pixels more than false alarms when beta > alpha).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeseg.errors import EdgesegError
from edgeseg.models.regions import region_logits
from edgeseg.train.config import LOSSES


def _overlap_terms(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives per foreground class, pooled
    over the whole batch (so a batch whose slices miss a class does not give a 0/0 term)."""
    probs = logits.softmax(dim=1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return tp, fp, fn


def _region_targets(target: Tensor, regions: Tensor) -> Tensor:
    """(N, K, H, W) floats: 1 where a pixel's class is in region k (``regions`` is a (classes, K)
    membership table)."""
    return regions[target].permute(0, 3, 1, 2).float()


def region_pixel_loss(r: Tensor, t: Tensor, gamma: float | None, weight: Tensor | None) -> Tensor:
    """Binary cross-entropy of region logits ``r`` against region targets ``t`` (the sigmoid focal
    loss when ``gamma`` is given), averaged over pixels and regions, each pixel weighted by its
    class's weight (a pixel's terms in every region), normalised by the summed weights."""
    terms = F.binary_cross_entropy_with_logits(r, t, reduction="none")
    if gamma is not None:
        p = torch.sigmoid(r)
        terms = terms * (1 - (p * t + (1 - p) * (1 - t))).pow(gamma)
    if weight is None:
        return terms.mean()
    return (weight.unsqueeze(1) * terms).sum() / (weight.sum() * r.shape[1])


def _region_overlap_terms(r: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft TP, FP and FN per region of the sigmoid probabilities, pooled over the batch."""
    p = torch.sigmoid(r)
    dims = (0, 2, 3)
    return (p * t).sum(dims), (p * (1 - t)).sum(dims), ((1 - p) * t).sum(dims)


def focal_loss(logits: Tensor, target: Tensor, gamma: float, weight: Tensor | None = None) -> Tensor:
    """Mean over pixels of ``-w_y (1 - p_y)^gamma log p_y`` (Lin et al., 2017), with ``w`` the
    class weights (1 when None), normalised by the summed weights like weighted cross-entropy."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    w = weight[target] if weight is not None else torch.ones_like(log_p)
    terms = -w * (1 - log_p.exp()).pow(gamma) * log_p
    return terms.sum() / w.sum()


def gathered_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """``F.cross_entropy`` (mean over pixels; with class weights, normalised by their sum) from
    gathered log-probabilities. torch's 2-D NLL loss sums with atomic adds on CUDA and has no
    deterministic implementation there; gather, its backward and plain sums have."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    if weight is None:
        return -log_p.mean()
    w = weight[target]
    return -(w * log_p).sum() / w.sum()


class SegmentationLoss(nn.Module):
    """A region term (Dice or Tversky) plus a pixel term (cross-entropy or focal).

    ``kind`` is one of :data:`LOSSES`. ``class_weights`` (one per class, background first)
    weight the pixel term. The region term is 1 - the mean over foreground classes of
    ``(2 TP + s) / (2 TP + 2 alpha FP + 2 beta FN + s)``; Dice is alpha = beta = 0.5.
    ``pool_sums``, when given, sums TP, FP and FN further: training in several processes passes
    a differentiable sum over the processes, so the region term is pooled over the global batch
    (the pixel term is a per-process mean, which DDP's gradient averaging makes the global mean
    for equal batches; with class weights it is the mean of per-process weighted means).
    ``deterministic`` computes cross-entropy with :func:`gathered_cross_entropy`.
    ``regions`` (region-based training, edgeseg.models.regions) takes the model's class scores back
    to region logits and applies the same terms per region with sigmoids, as nnU-Net does: binary
    cross-entropy (or the sigmoid focal loss) and soft Dice (or Tversky) over every region; class
    weights weight each pixel's terms by its true class, as they weight its cross-entropy term.
    """

    def __init__(
        self,
        kind: str = "dice-ce",
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        tversky: tuple[float, float] = (0.3, 0.7),
        region_weight: float = 1.0,
        pixel_weight: float = 1.0,
        smooth: float = 1.0,
        pool_sums: Callable[[Tensor], Tensor] | None = None,
        deterministic: bool = False,
        regions: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise EdgesegError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
        if class_weights is not None and (not class_weights or any(not w >= 0 for w in class_weights)):
            raise EdgesegError(f"class weights must be numbers >= 0, got {list(class_weights)}")
        alpha, beta = (float(v) for v in tversky)
        if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
            raise EdgesegError(f"Tversky alpha and beta must be >= 0 and not both 0, got {alpha}, {beta}")
        if not focal_gamma >= 0:
            raise EdgesegError(f"focal gamma must be >= 0, got {focal_gamma}")
        self.kind = kind
        self.region, self.pixel = kind.split("-")
        self.alpha, self.beta = (alpha, beta) if self.region == "tversky" else (0.5, 0.5)
        self.focal_gamma = float(focal_gamma)
        self.region_weight, self.pixel_weight, self.smooth = region_weight, pixel_weight, smooth
        self.pool_sums, self.deterministic = pool_sums, deterministic
        weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        members = None
        if regions is not None:
            classes = 1 + max(c for region in regions for c in region)
            members = torch.tensor([[c in region for region in regions] for c in range(classes)], dtype=torch.bool)
        self.register_buffer("regions", members, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        weight = self.class_weights
        if weight is not None:
            if weight.numel() != logits.shape[1]:
                raise EdgesegError(f"{weight.numel()} class weights for a model of {logits.shape[1]} classes")
            weight = weight.to(logits.device)
        if self.regions is not None:
            r = region_logits(logits)
            t = _region_targets(target, self.regions)
            pixel = region_pixel_loss(r, t, None if self.pixel == "ce" else self.focal_gamma,
                                      None if weight is None else weight[target])
            tp, fp, fn = _region_overlap_terms(r, t)
        elif self.pixel == "ce":
            pixel = (gathered_cross_entropy(logits, target, weight) if self.deterministic
                     else F.cross_entropy(logits, target, weight=weight))
        else:
            pixel = focal_loss(logits, target, self.focal_gamma, weight)
        if self.regions is None:
            tp, fp, fn = _overlap_terms(logits, target)
        if self.pool_sums is not None:
            tp, fp, fn = self.pool_sums(torch.stack([tp, fp, fn])).unbind(0)
        # Written as 2TP / (2TP + 2a FP + 2b FN) so that a = b = 0.5 is exactly soft Dice with
        # the same smoothing as before.
        index = (2 * tp + self.smooth) / (2 * tp + 2 * self.alpha * fp + 2 * self.beta * fn + self.smooth)
        return self.pixel_weight * pixel + self.region_weight * (1 - index.mean())


class DiceCELoss(SegmentationLoss):
    """Cross-entropy plus (1 - soft Dice) over the foreground classes (the default loss)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1.0,
                 pool_sums: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__("dice-ce", region_weight=dice_weight, pixel_weight=ce_weight, smooth=smooth,
                         pool_sums=pool_sums)


def build_loss(cfg, pool_sums: Callable[[Tensor], Tensor] | None = None) -> SegmentationLoss:
    """The loss a TrainConfig names (``loss``, ``class_weights``, ``focal_gamma``, ``tversky``);
    ``pool_sums`` as in :class:`SegmentationLoss`; ``deterministic`` as the run's."""
    return SegmentationLoss(cfg.loss, cfg.class_weights, cfg.focal_gamma, tuple(cfg.tversky), pool_sums=pool_sums,
                            deterministic=cfg.deterministic, regions=getattr(cfg, "regions", None))
