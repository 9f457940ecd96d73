"""Class-weighted Dice + CE, focal and Tversky terms against values computed by hand in numpy."""

import numpy as np
import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.train.config import TrainConfig
from edgeseg.train.losses import DiceCELoss, SegmentationLoss, build_loss


@pytest.fixture
def batch():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 5))
    return logits, target


def _numpy_terms(logits, target, weights=None, gamma=None):
    z = logits.numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = target.numpy()
    p_true = np.take_along_axis(p, t[:, None], 1)[:, 0]
    w = np.ones_like(p_true) if weights is None else np.asarray(weights)[t]
    focal = 1.0 if gamma is None else (1 - p_true) ** gamma
    pixel = float((-w * focal * np.log(p_true)).sum() / w.sum())
    tp, fp, fn = [], [], []
    for c in (1, 2):
        g = (t == c).astype(np.float64)
        tp.append((p[:, c] * g).sum())
        fp.append((p[:, c] * (1 - g)).sum())
        fn.append(((1 - p[:, c]) * g).sum())
    return pixel, np.array(tp), np.array(fp), np.array(fn)


def test_weighted_dice_ce_matches_hand_computation(batch):
    logits, target = batch
    weights = [0.5, 1.0, 2.0]
    pixel, tp, fp, fn = _numpy_terms(logits, target, weights)
    dice = (2 * tp + 1) / (2 * tp + fp + fn + 1)
    expected = pixel + 1 - dice.mean()
    assert float(SegmentationLoss("dice-ce", weights)(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_focal_and_tversky_match_hand_computation(batch):
    logits, target = batch
    pixel, tp, fp, fn = _numpy_terms(logits, target, [1.0, 2.0, 3.0], gamma=2.0)
    alpha, beta = 0.3, 0.7
    tversky = (2 * tp + 1) / (2 * tp + 2 * alpha * fp + 2 * beta * fn + 1)
    expected = pixel + 1 - tversky.mean()
    loss = SegmentationLoss("tversky-focal", [1.0, 2.0, 3.0], focal_gamma=2.0, tversky=(alpha, beta))
    assert float(loss(logits, target)) == pytest.approx(expected, rel=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy_and_default_is_old_dice_ce(batch):
    logits, target = batch
    assert float(SegmentationLoss("dice-focal", focal_gamma=0.0)(logits, target)) == pytest.approx(
        float(SegmentationLoss("dice-ce")(logits, target)), rel=1e-9)
    assert float(DiceCELoss()(logits, target)) == pytest.approx(float(SegmentationLoss()(logits, target)))


def test_tversky_penalises_missed_lesion_more_than_false_alarm():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    confident = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).double() * 20 - 10
    missed, alarm = confident.clone(), confident.clone()
    missed[0, :, 2:4, 2:6] = confident[0, :, 0:2, 0:4]        # 8 lesion pixels called background
    alarm[0, :, 6:8, 0:4] = confident[0, :, 2:4, 2:6]          # 8 background pixels called lesion
    loss = SegmentationLoss("tversky-ce", tversky=(0.3, 0.7))
    assert float(loss(missed, target)) > float(loss(alarm, target))


def test_bad_settings_are_refused():
    with pytest.raises(EdgesegError, match="loss must be one of"):
        SegmentationLoss("dice-hinge")
    with pytest.raises(EdgesegError, match="class weights"):
        SegmentationLoss("dice-ce", [1.0, -1.0])
    with pytest.raises(EdgesegError, match="one number per class"):
        TrainConfig(labels={"ggo": [1], "consolidation": [2]}, class_weights=[1.0, 2.0])
    loss = build_loss(TrainConfig(labels={"ggo": [1]}, loss="tversky-focal", class_weights=[1, 3], focal_gamma=1.5))
    assert (loss.kind, loss.focal_gamma, loss.class_weights.tolist()) == ("tversky-focal", 1.5, [1.0, 3.0])
