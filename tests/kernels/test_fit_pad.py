"""fit=pad in the C kernels against the numpy oracle: odd shapes, both interpolations, float16,
every post-processing path, refusals, and the pad -> un-pad round trip."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.kernels import postprocess, preprocess, preprocess_labels, reference
from edgeseg.spec import PreprocessSpec

from tests.kernels.test_parity import assert_model_input_close, random_slices

# The odd shapes, the one-row / one-column extremes that are still valid (exactly 1 px
# after scaling), near-square, and a slice already of the box's size.
SHAPES = [(153, 456), (457, 351), (1, 256), (256, 1), (2, 512), (512, 2), (255, 256), (7, 5), (128, 64)]


def pad_spec(size=(256, 256), **kwargs) -> PreprocessSpec:
    return PreprocessSpec(window=(-1000.0, 400.0), size=size, mean=0.2, std=0.7, fit="pad", **kwargs)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.uint8, np.float32])
@pytest.mark.parametrize("interpolation", ["bilinear", "area"])
def test_preprocess_pad_matches_the_oracle(shape, dtype, interpolation):
    rng = np.random.default_rng(sum(shape))
    images = random_slices(rng, dtype, (2, *shape))
    spec = pad_spec(interpolation=interpolation)
    assert_model_input_close(preprocess(images, spec), reference.preprocess(images, spec))


@pytest.mark.parametrize("shape,size", [((153, 456), (256, 256)), ((457, 351), (256, 256)), ((1, 256), (256, 256)),
                                        ((31, 17), (256, 256)), ((153, 456), (96, 64)), ((457, 351), (96, 64)),
                                        ((1, 64), (96, 64)), ((31, 17), (96, 64))])
def test_preprocess_pad_float16_and_non_square_models(shape, size):
    rng = np.random.default_rng(1)
    images = random_slices(rng, np.int16, (1, *shape))[:, ::-1]  # a reversed (negative-stride) view
    spec = pad_spec(size=size, dtype="float16")
    got = preprocess(images, spec)
    assert got.dtype == np.float16
    assert_model_input_close(got, reference.preprocess(images, spec))


def test_padding_reads_as_clipped_air():
    spec = pad_spec()
    air = np.full((153, 456), -3000, np.int16)  # below the window: clipped to its low end
    out = preprocess(air, spec)
    assert np.all(out == out[0, 0, 0, 0])  # margin and slice are the same number
    box_rows, _, top, _ = spec.fit_box(153, 456)
    bright = preprocess(np.full((153, 456), 1000, np.int16), spec)[0, 0]
    assert np.all(bright[:top] == out[0, 0, 0, 0]) and np.all(bright[top + box_rows:] == out[0, 0, 0, 0])
    assert np.all(bright[top:top + box_rows] > out[0, 0, 0, 0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("classes", [1, 2, 3])
@pytest.mark.parametrize("resize", ["logits", "labels"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_postprocess_pad_matches_the_oracle(shape, classes, resize, dtype):
    rng = np.random.default_rng(classes + sum(shape))
    logits = rng.normal(size=(1, classes, 256, 256)).astype(dtype)
    for keep_largest in (False, True):
        got = postprocess(logits, shape, resize=resize, fit="pad", keep_largest=keep_largest)
        want = reference.postprocess(logits, shape, resize=resize, fit="pad", keep_largest=keep_largest)
        assert got.shape == (1, *shape)
        np.testing.assert_array_equal(got, want)


def test_postprocess_pad_ignores_what_the_model_says_in_the_margin():
    """Logits outside the slice's box must not reach the labels."""
    logits = np.zeros((1, 2, 64, 64), np.float32)
    logits[0, 1] = 5.0  # class 1 everywhere ...
    rows, cols, top, left = pad_spec(size=(64, 64)).fit_box(30, 64)
    logits[0, 1, top:top + rows, left:left + cols] = -5.0  # ... except inside the box
    assert not postprocess(logits, (30, 64), fit="pad").any()
    assert postprocess(logits, (30, 64), fit="stretch").any()


@pytest.mark.parametrize("shape", [(1, 512), (512, 1), (3, 1000)])
def test_a_slice_too_thin_is_refused_in_one_line(shape):
    spec = pad_spec()
    name = f"{shape[0]}x{shape[1]}"
    with pytest.raises(DataError, match=name) as err:
        preprocess(np.zeros(shape, np.int16), spec)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match=name):
        postprocess(np.zeros((1, 2, 256, 256), np.float32), shape, fit="pad")
    with pytest.raises(DataError, match=name):
        reference.preprocess(np.zeros(shape, np.int16), spec)


# (slice, model, resize): label mode on a box of the slice's size or twice it (nearest is then the
# identity both ways); logits mode on a box of the slice's size (bilinear is then the identity).
ROUND_TRIPS = [((64, 32), (64, 64), "labels"), ((128, 64), (256, 256), "labels"), ((30, 71), (71, 71), "labels"),
               ((64, 32), (64, 64), "logits"), ((30, 71), (71, 71), "logits"), ((1, 40), (40, 40), "logits")]


@pytest.mark.parametrize("shape,size,resize", ROUND_TRIPS)
def test_pad_then_unpad_returns_the_input_geometry_exactly(shape, size, resize):
    """Labels whose resize is the identity (box = slice, or an integer factor by nearest) come back
    identical after pad -> one-hot logits -> un-pad."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(2, *shape), dtype=np.uint8)
    spec = PreprocessSpec(size=size, fit="pad")
    padded = preprocess_labels(labels, spec)
    np.testing.assert_array_equal(padded, reference.preprocess_labels(labels, spec))
    rows, cols, top, left = spec.fit_box(*shape)
    assert not padded[:, :top].any() and not padded[:, top + rows:].any()
    assert not padded[:, :, :left].any() and not padded[:, :, left + cols:].any()
    one_hot = (np.arange(3)[None, :, None, None] == padded[:, None]).astype(np.float32)
    back = postprocess(one_hot, shape, fit="pad", resize=resize)
    np.testing.assert_array_equal(back, labels)


def test_image_and_mask_share_one_geometry():
    """The slice's content and its mask land in the same box."""
    spec = PreprocessSpec(window=(0.0, 100.0), size=(64, 64), fit="pad")
    hu = np.zeros((45, 90), np.int16)
    hu[10:30, 20:60] = 100
    image = preprocess(hu, spec)[0, 0]
    mask = preprocess_labels((hu > 0).astype(np.uint8), spec)
    np.testing.assert_array_equal(image > 0.5, mask == 1)
