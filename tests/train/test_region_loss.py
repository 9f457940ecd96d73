"""The region-based loss (sigmoid BCE or focal + soft Dice or Tversky per region) against a numpy
oracle written from the formulas, its gradient against finite differences of that oracle, and
its records in a trained checkpoint."""

import numpy as np
import pytest
import torch
from scipy.special import expit

from edgeseg.models.regions import region_scores
from edgeseg.train.losses import SegmentationLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REGIONS = [[1, 2], [2]]


def oracle(r: np.ndarray, target: np.ndarray, kind: str, weights=None, gamma=2.0, tversky=(0.3, 0.7)) -> float:
    """nnU-Net's region loss in float64: per region, binary cross-entropy of its logit (optionally
    focal), each pixel weighted by its class's weight, plus 1 - the mean over regions of the soft
    Dice (Tversky) index of the sigmoids pooled over the batch (smoothing 1)."""
    region, pixel = kind.split("-")
    t = np.stack([np.isin(target, reg) for reg in REGIONS], axis=1).astype(np.float64)
    p = expit(r)
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    if pixel == "focal":
        bce = bce * (1 - (t * p + (1 - t) * (1 - p))) ** gamma
    w = np.ones(target.shape) if weights is None else np.asarray(weights)[target]
    pixel_term = (w[:, None] * bce).sum() / (w.sum() * r.shape[1])
    tp, fp, fn = ((p * t).sum((0, 2, 3)), (p * (1 - t)).sum((0, 2, 3)), ((1 - p) * t).sum((0, 2, 3)))
    a, b = tversky if region == "tversky" else (0.5, 0.5)
    index = (2 * tp + 1) / (2 * tp + 2 * a * fp + 2 * b * fn + 1)
    return float(pixel_term + 1 - index.mean())


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(2, 2, 6, 7)) * 3
    target = rng.integers(0, 3, size=(2, 6, 7))
    return r, target


@pytest.mark.parametrize("kind", ["dice-ce", "dice-focal", "tversky-ce", "tversky-focal"])
@pytest.mark.parametrize("weights", [None, [0.5, 1.0, 2.0]])
def test_the_region_loss_is_the_oracle(kind, weights):
    r, target = _batch(1)
    loss = SegmentationLoss(kind, weights, focal_gamma=2.0, tversky=(0.3, 0.7), regions=REGIONS)
    got = loss(region_scores(torch.from_numpy(r).float()), torch.from_numpy(target))
    assert got.item() == pytest.approx(oracle(r.astype(np.float32).astype(np.float64), target, kind, weights), rel=1e-5)


def test_the_gradient_reaches_the_region_logits_as_the_oracle_s():
    """Through the head and back (scores -> region logits) the gradient is the region loss's own."""
    r, target = _batch(2)
    weights = [0.5, 1.0, 2.0]
    logits = torch.from_numpy(r).float().requires_grad_(True)
    SegmentationLoss("dice-ce", weights, regions=REGIONS)(region_scores(logits), torch.from_numpy(target)).backward()
    r64 = r.astype(np.float32).astype(np.float64)
    for index in [(0, 0, 0, 0), (0, 1, 2, 3), (1, 0, 5, 6), (1, 1, 4, 1)]:
        step = np.zeros_like(r64)
        step[index] = 1e-5
        numeric = (oracle(r64 + step, target, "dice-ce", weights) - oracle(r64 - step, target, "dice-ce", weights)) / 2e-5
        assert logits.grad[index].item() == pytest.approx(numeric, rel=2e-3, abs=1e-6)

