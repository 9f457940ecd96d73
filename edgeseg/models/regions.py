"""Region-based models: sigmoid region logits turned into class scores by a fixed head.

The network emits one logit ``r_k`` per region (edgeseg.models.region_order). nnU-Net decodes
them in order: the label is the class of the last region with ``sigmoid(r_k) > 0.5`` (``r_k > 0``),
else background. The head appended here gives per-class scores ``s_0 = 0`` and
``s_k = r_k + max(0, s_1, ..., s_{k-1})``: ``s_k`` beats every earlier score exactly when
``r_k > 0``, and ties (``r_k = 0``) leave the earlier class ahead under a first-maximum argmax,
so the argmax of the scores is that decoding and everything downstream of the logits (export,
INT8, the gate, the C post-processing) runs unchanged. The head has no weights and is
invertible: ``r_k = s_k - max(0, s_1, ..., s_{k-1})`` (:func:`region_logits`), which the loss
and test-time mirroring use. In float32 the sum rounds: ``0 < r_k <= ulp(M)/2`` with ``M`` the
running maximum decodes as ``r_k = 0`` (a sigmoid within about 1e-7 of 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgeseg.models.base import SegmentationModel


def region_scores(r: Tensor) -> Tensor:
    """Class scores (N, K + 1, H, W) from region logits (N, K, H, W), background's score 0."""
    top = torch.zeros_like(r[:, :1])
    scores = [top]
    for k in range(r.shape[1]):
        s = r[:, k:k + 1] + top
        scores.append(s)
        top = torch.maximum(top, s)
    return torch.cat(scores, dim=1)


def region_logits(s: Tensor) -> Tensor:
    """The region logits (N, K, H, W) :func:`region_scores` made the class scores ``s`` from."""
    top = torch.zeros_like(s[:, :1])
    logits = []
    for k in range(1, s.shape[1]):
        logits.append(s[:, k:k + 1] - top)
        top = torch.maximum(top, s[:, k:k + 1])
    return torch.cat(logits, dim=1)


class RegionModel(SegmentationModel):
    """An architecture emitting one logit per region, followed by the scores head.

    Args:
        net: the architecture, built with one output channel per region.
        regions: the checked regions, region k decoding to class k + 1.

    Returns:
        ``forward(x)`` maps (N, C, H, W) to (N, len(regions) + 1, H, W) class scores.
    """

    def __init__(self, net: SegmentationModel, regions: tuple[tuple[int, ...], ...]) -> None:
        super().__init__()
        self.net = net
        self.depth = net.depth
        self.regions = regions

    def forward(self, x: Tensor) -> Tensor:
        return region_scores(self.net(x))


def build_region_model(cls: type[nn.Module], regions: tuple[tuple[int, ...], ...], **kwargs) -> RegionModel:
    """``cls(num_classes=len(regions), **kwargs)`` with the scores head appended."""
    return RegionModel(cls(num_classes=len(regions), **kwargs), regions)
