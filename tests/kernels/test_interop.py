"""How the pixel-centre convention compares with torch and OpenCV (measured, not assumed).

* bilinear vs ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``: same
  convention; torch computes the scale in float32, so at non-integer ratios sample positions move
  by ~1e-6 px: agreement to 1e-5 of the window width (integer ratios: float32 rounding only);
* bilinear vs ``cv2.resize(INTER_LINEAR)`` on float32: agreement to 1e-6 of the window width;
* on uint8, cv2 uses 11-bit fixed-point weights and rounds to uint8: within 1 grey level of the
  oracle's exact value, and ~13% of pixels differ by 1 from the rounded oracle;
* area vs ``cv2.INTER_AREA``: equal when both axes shrink or both grow; when one axis grows and
  the other shrinks, OpenCV switches to its linear path (hundreds of HU apart). torch's
  ``mode="area"`` (adaptive average pooling) matches only at integer ratios.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.kernels import preprocess, reference
from edgeseg.spec import PreprocessSpec

cv2 = pytest.importorskip("cv2")

CASES = [((512, 512), (256, 256)), ((512, 512), (128, 128)), ((100, 70), (333, 41)), ((64, 64), (200, 200)), ((37, 53), (20, 30))]


def _ramp_noise(shape):
    rng = np.random.default_rng(sum(shape))
    return rng.uniform(0, 1000, size=shape).astype(np.float32)


def _kernel(img, size, interpolation="bilinear"):
    spec = PreprocessSpec(window=(0.0, 1000.0), size=size, interpolation=interpolation)
    return preprocess(img, spec)[0, 0].astype(np.float64)  # = resized / 1000


@pytest.mark.parametrize("src,size", CASES)
def test_bilinear_matches_torch_interpolate(src, size):
    torch = pytest.importorskip("torch")
    img = _ramp_noise(src)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(img)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy() / 1000.0
    np.testing.assert_allclose(_kernel(img, size), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("src,size", CASES)
def test_bilinear_matches_cv2_inter_linear_on_float32(src, size):
    img = _ramp_noise(src)
    want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR) / 1000.0
    np.testing.assert_allclose(_kernel(img, size), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("src,size", CASES)
def test_cv2_uint8_fixed_point_is_within_one_grey_level(src, size):
    img = np.random.default_rng(1).integers(0, 256, size=src).astype(np.uint8)
    exact = reference.resize_plane(img.astype(np.float64), size, "bilinear")
    got = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float64)
    assert np.abs(got - exact).max() <= 1.0
    assert np.mean(got != np.round(exact)) < 0.2


@pytest.mark.parametrize("src,size", [c for c in CASES if c != ((100, 70), (333, 41))])
def test_area_matches_cv2_inter_area_when_axes_agree(src, size):
    img = _ramp_noise(src)
    want = cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA) / 1000.0
    np.testing.assert_allclose(_kernel(img, size, "area"), want, rtol=0, atol=1e-6)


def test_area_differs_from_cv2_when_one_axis_grows():
    img = _ramp_noise((100, 70))
    want = cv2.resize(img, (41, 333), interpolation=cv2.INTER_AREA) / 1000.0
    assert np.abs(_kernel(img, (333, 41), "area") - want).max() > 0.01
