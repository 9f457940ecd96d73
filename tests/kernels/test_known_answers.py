"""Known answers: results a user can check by hand, independent of the numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.kernels import largest_component, postprocess, preprocess
from edgeseg.spec import PreprocessSpec

DTYPES = [np.uint8, np.int16, np.uint16, np.float32]


@pytest.mark.parametrize("interpolation", ["bilinear", "area"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_image_stays_constant(dtype, interpolation):
    spec = PreprocessSpec(window=(0.0, 200.0), size=(37, 91), interpolation=interpolation, mean=0.25, std=0.5)
    out = preprocess(np.full((3, 64, 50), 50, dtype=dtype), spec)
    np.testing.assert_allclose(out, (50 / 200 - 0.25) / 0.5, atol=1e-6)


def test_window_clips_before_resize():
    # A metal spike far above the window must not brighten its neighbours.
    img = np.zeros((8, 8), np.int16)
    img[3, 3] = 3000
    spec = PreprocessSpec(window=(0.0, 100.0), size=(4, 4))
    out = preprocess(img, spec)[0, 0]
    assert out.max() == pytest.approx(0.25)  # one clipped pixel (1.0) shares a 2x2 footprint


def test_impulse_bilinear_upscale_spreads_as_a_tent():
    img = np.zeros((5, 5), np.float32)
    img[2, 2] = 1.0
    out = preprocess(img, PreprocessSpec(window=(0.0, 1.0), size=(10, 10)))[0, 0]
    # Output 4 samples x = 1.75, output 5 samples x = 2.25: weights 0.75 each way around the peak.
    tent = np.array([0, 0, 0, 0.25, 0.75, 0.75, 0.25, 0, 0, 0])
    np.testing.assert_allclose(out, np.outer(tent, tent), atol=1e-7)


def test_linear_ramp_stays_linear_in_the_interior():
    ramp = np.tile(np.arange(64, dtype=np.float32), (32, 1))  # value = column index
    out = preprocess(ramp, PreprocessSpec(window=(0.0, 63.0), size=(32, 24)))[0, 0] * 63.0
    x = (np.arange(24) + 0.5) * 64 / 24 - 0.5  # pixel-centre sample positions
    np.testing.assert_allclose(out, np.broadcast_to(x, out.shape), atol=1e-4)


def test_area_halving_is_block_mean():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 100, size=(6, 8)).astype(np.uint8)
    out = preprocess(img, PreprocessSpec(window=(0.0, 100.0), size=(3, 4), interpolation="area"))[0, 0]
    blocks = img.reshape(3, 2, 4, 2).mean(axis=(1, 3)) / 100.0
    np.testing.assert_allclose(out, blocks, atol=1e-6)


def test_output_layout_and_dtype():
    spec = PreprocessSpec(window=(-100.0, 400.0), size=(16, 24), dtype="float16")
    out = preprocess(np.zeros((5, 40, 30), np.int16), spec)
    assert out.shape == (5, 1, 16, 24) and out.dtype == np.float16 and out.flags.c_contiguous


def test_argmax_ties_go_to_lowest_class():
    logits = np.zeros((1, 3, 4, 4), np.float32)
    logits[0, 2, 0, 0] = 1.0
    out = postprocess(logits, (4, 4))
    expected = np.zeros((1, 4, 4), np.uint8)
    expected[0, 0, 0] = 2
    np.testing.assert_array_equal(out, expected)


def test_labels_mode_nearest_doubles_each_pixel():
    logits = np.zeros((1, 2, 2, 2), np.float16)
    logits[0, 1, 0, 1] = 5
    out = postprocess(logits, (4, 4), resize="labels")[0]
    np.testing.assert_array_equal(out, np.kron(np.array([[0, 1], [0, 0]]), np.ones((2, 2))).astype(np.uint8))


def test_largest_component_keeps_biggest_blob_per_class():
    labels = np.zeros((8, 10), np.uint8)
    labels[0:3, 0:3] = 1  # 9 px: kept
    labels[6:8, 8:10] = 1  # 4 px: dropped
    labels[5, 0] = 2  # 1 px, first in raster order of two equal class-2 blobs: kept
    labels[7, 5] = 2
    labels[4, 4] = 1  # diagonal neighbour of nothing: dropped
    out = largest_component(labels, num_classes=3)
    expected = np.zeros_like(labels)
    expected[0:3, 0:3] = 1
    expected[5, 0] = 2
    np.testing.assert_array_equal(out, expected)


def test_largest_component_uses_8_connectivity():
    labels = np.eye(5, dtype=np.uint8)  # a diagonal line is one 8-connected component
    labels[0, 4] = 1
    out = largest_component(labels, 2)
    np.testing.assert_array_equal(out, np.eye(5, dtype=np.uint8))
