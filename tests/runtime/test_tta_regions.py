"""Test-time mirroring of a region model: the Segmenter's labels are nnU-Net's decoding of the
region sigmoids averaged over the mirrors, computed here from the network's own region logits
(before the scores head) with scipy; softmax averaging of the scores is not that decoding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from edgeseg.runtime import Segmenter
from edgeseg.runtime.tta import mirrored_logits
from edgeseg.spec import PreprocessSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MIRRORS = [(False, False), (False, True), (True, False), (True, True)]
SPEC = PreprocessSpec(window=(-200.0, 200.0), size=(32, 32))


def _mirror_both(a: np.ndarray, rows: bool, cols: bool) -> np.ndarray:
    """Flip the last two axes of ``a`` as told, by reversed slices (not np.flip)."""
    if rows:
        a = a[..., ::-1, :]
    return a[..., :, ::-1] if cols else a


def _region_model():
    """The real scores head over a fixed 'network' whose two region logits depend on position,
    so the mirrors disagree, and spread around 0."""
    import torch

    from edgeseg.models.base import SegmentationModel
    from edgeseg.models.regions import RegionModel

    class PositionNet(SegmentationModel):
        depth = 0

        def forward(self, x):
            h, w = x.shape[-2:]
            yy = torch.linspace(-1, 1, h).view(h, 1)
            xx = torch.linspace(-1, 1, w).view(1, w)
            v = x[:, 0] - x.mean()
            return torch.stack([10 * v + 6 * v * yy + 2 * xx, torch.sin(12 * v) + 3 * yy * xx - 0.8], dim=1)

    return RegionModel(PositionNet(), ((1, 2), (2,))).eval()


def _oracle_labels(model, batch: np.ndarray) -> np.ndarray:
    """nnU-Net: mean over the mirrors of each region's sigmoid (float64), then the last region above 0.5."""
    import torch

    means = 0
    for rows, cols in MIRRORS:
        view = np.ascontiguousarray(_mirror_both(batch, rows, cols))
        with torch.no_grad():
            r = model.net(torch.from_numpy(view)).double().numpy()
        means = means + _mirror_both(expit(r), rows, cols) / len(MIRRORS)
    labels = np.zeros((batch.shape[0], *batch.shape[2:]), np.uint8)
    for k in range(means.shape[1]):
        labels[means[:, k] > 0.5] = k + 1
    return labels


def test_mirrored_region_models_decode_the_mean_region_sigmoids():
    import torch

    from edgeseg.kernels import preprocess

    region_model = _region_model()
    hu = np.random.default_rng(5).normal(0, 80, size=(3, 32, 32)).astype(np.int16)
    with Segmenter.from_module(region_model, SPEC, {0: "background", 1: "ggo", 2: "consolidation"}, tta="mirror") as seg:
        assert seg.regions
        got = seg.predict_volume(hu, volume_filters=False)
    want = _oracle_labels(region_model, preprocess(hu.astype(np.float32), SPEC, reference=True))
    assert np.bincount(want.ravel(), minlength=3).min() > 100  # each class decoded in many pixels
    # float32 here, float64 in the oracle: a mean within a rounding of 0.5 may decode either way
    assert np.mean(got != want) < 1e-3, f"{int((got != want).sum())} of {got.size} labels differ"
    # the same scores averaged as softmax probabilities decode otherwise: the test tells them apart
    batch = preprocess(hu.astype(np.float32), SPEC, reference=True)

    def infer(b):
        with torch.no_grad():
            return region_model(torch.from_numpy(b)).numpy()

    softmax_labels = np.argmax(mirrored_logits(infer, batch, "mirror"), axis=1)
    assert np.count_nonzero(softmax_labels != want) > 20


def test_a_bundle_s_manifest_says_whether_its_model_is_a_region_model(bundle_copy):
    import json

    assert not Segmenter.load(bundle_copy).regions
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["model"]["regions"] = [[1]]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with Segmenter.load(bundle_copy, tta="mirror") as seg:
        assert seg.regions
