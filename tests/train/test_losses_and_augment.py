"""Dice+CE loss against a hand-written oracle; augmentation keeps images and labels aligned."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.spec import PreprocessSpec
from edgeseg.train.augment import AugmentConfig, BatchAugmenter
from edgeseg.train.losses import DiceCELoss
from edgeseg.train.schedule import lr_at


def test_dice_ce_equals_loop_computation():
    torch.manual_seed(0)
    logits = torch.randn(3, 3, 5, 6)
    target = torch.randint(0, 3, (3, 5, 6))
    probs = logits.softmax(1).numpy()
    t = target.numpy()
    # Cross-entropy by hand: mean of -log p(true class).
    ce = -np.mean(np.log(np.take_along_axis(probs, t[:, None], 1)))
    dices = []
    for c in (1, 2):
        p, g = probs[:, c], (t == c).astype(np.float64)
        dices.append((2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1))
    expected = ce + 1 - np.mean(dices)
    assert float(DiceCELoss()(logits, target)) == pytest.approx(expected)


def test_perfect_prediction_has_near_zero_loss_and_wrong_one_high():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    good = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    loss = DiceCELoss()
    assert float(loss(good, target)) < 1e-3
    assert float(loss(-good, target)) > 10


def test_augmentation_moves_labels_with_images():
    spec = PreprocessSpec(window=(0, 255), size=(64, 64))
    aug = BatchAugmenter(spec, AugmentConfig(p=1.0, window_low=(0, 0), window_high=(1, 1), gamma=(1, 1), contrast=(1, 1), brightness=0, noise_std=0))
    labels = torch.zeros(4, 64, 64, dtype=torch.long)
    labels[:, 10:30, 5:25] = 1
    images = labels[:, None].float() * 0.8  # image bright exactly where the label is
    out_img, out_lab = aug(images, labels, torch.Generator().manual_seed(3))
    bright = out_img[:, 0] > 0.4
    agreement = (bright == (out_lab == 1)).float().mean()
    assert agreement > 0.98
    assert not torch.equal(out_lab, labels)  # something did move
    assert set(out_lab.unique().tolist()) <= {0, 1}


def test_outside_of_rotated_slice_is_filled_with_air_not_zero():
    spec = PreprocessSpec(window=(0, 255), size=(32, 32), mean=0.5, std=0.5)  # air -> -1.0
    aug = BatchAugmenter(spec, AugmentConfig(p=1.0, flip=False, rotate_deg=45, scale=(0.6, 0.6), window_low=(0, 0), window_high=(1, 1),
                                              gamma=(1, 1), contrast=(1, 1), brightness=0, noise_std=0))
    images = torch.full((1, 1, 32, 32), 1.0)  # all at the window top
    out, _ = aug(images, torch.zeros(1, 32, 32, dtype=torch.long), torch.Generator().manual_seed(0))
    assert float(out[0, 0, 0, 0]) == pytest.approx(-1.0)
    assert float(out[0, 0, 16, 16]) == pytest.approx(1.0)


def test_lr_schedule_warms_up_then_decays_to_one_percent():
    peak, total, warm = 1e-3, 100, 10
    lrs = [lr_at(s, total, warm, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm)
    assert lrs[warm] == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))
    assert lr_at(total, total, warm, peak) == pytest.approx(0.01 * peak)
    assert math.isclose(lr_at(warm + (total - warm) // 2, total, warm, peak), peak * (0.01 + 0.99 * 0.5), rel_tol=1e-6)


def test_augment_p_zero_leaves_batches_untouched_and_one_changes_every_slice():
    spec = PreprocessSpec(window=(0.0, 255.0), size=(32, 32))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 32, 32)
    labels = (images[:, 0] > 0.5).long()
    same_images, same_labels = BatchAugmenter(spec, AugmentConfig(p=0.0))(images, labels, gen)
    assert torch.equal(same_images, images) and torch.equal(same_labels, labels)
    moved, _ = BatchAugmenter(spec, AugmentConfig(p=1.0))(images, labels, gen)
    assert all(not torch.allclose(moved[i], images[i]) for i in range(6))
