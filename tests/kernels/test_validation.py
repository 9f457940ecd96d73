"""Bad arguments raise EdgesegError subclasses naming the offending value, before any C runs."""

from __future__ import annotations

import numpy as np
import pytest

import edgeseg.kernels as kernels
from edgeseg.errors import DataError, EdgesegError, SpecError
from edgeseg.kernels import postprocess, preprocess
from edgeseg.spec import PreprocessSpec

SPEC = PreprocessSpec(window=(-100.0, 400.0), size=(8, 8))


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int8, bool, np.complex64])
def test_preprocess_rejects_unsupported_dtype(dtype):
    with pytest.raises(DataError, match=str(np.dtype(dtype))):
        preprocess(np.zeros((4, 4), dtype=dtype), SPEC)


@pytest.mark.parametrize("shape", [(4,), (1, 1, 4, 4), (0, 4), (4, 0)])
def test_preprocess_rejects_bad_shapes(shape):
    with pytest.raises(DataError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        preprocess(np.zeros(shape, np.int16), SPEC)


def test_inverted_window_is_rejected_by_the_spec():
    with pytest.raises(SpecError, match="low=400.0 high=-100.0"):
        PreprocessSpec(window=(400.0, -100.0))


def test_preprocess_rejects_a_non_spec():
    with pytest.raises(SpecError, match="dict"):
        preprocess(np.zeros((4, 4), np.int16), {"window": (0, 1)})


@pytest.mark.parametrize("reference", [False, True])
def test_nan_in_float_input_is_rejected(reference):
    img = np.zeros((3, 16, 16), np.float32)
    img[1, 15, 15] = np.nan  # a pixel bilinear 16 -> 8 never reads: still refused
    with pytest.raises(DataError, match=r"NaN or inf in slice\(s\) \[1\]"):
        preprocess(img, SPEC, reference=reference)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
@pytest.mark.parametrize("reference", [False, True])
def test_infinite_hu_are_rejected(bad, reference):
    img = np.zeros((2, 4, 4), np.float32)
    img[1, 3, 0] = bad
    with pytest.raises(DataError, match=r"NaN or inf in slice\(s\) \[1\]"):
        preprocess(img, PreprocessSpec(window=(0.0, 10.0), size=(2, 2)), reference=reference)


def test_empty_stack_gives_empty_output():
    assert preprocess(np.zeros((0, 5, 5), np.int16), SPEC).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("reference", [False, True])
def test_non_finite_logits_are_rejected(bad, reference):
    logits = np.zeros((2, 2, 4, 4), np.float32)
    logits[1, 1, 0, 0] = bad
    with pytest.raises(DataError, match=r"slice\(s\) \[1\]"):
        postprocess(logits, (8, 8), reference=reference)


def test_postprocess_rejects_bad_logits():
    with pytest.raises(DataError, match="float64"):
        postprocess(np.zeros((1, 2, 4, 4)), (8, 8))
    with pytest.raises(DataError, match=r"\(2, 4, 4\)"):
        postprocess(np.zeros((2, 4, 4), np.float32), (8, 8))
    with pytest.raises(DataError, match="257"):
        postprocess(np.zeros((1, 257, 2, 2), np.float32), (8, 8))


@pytest.mark.parametrize("size", [(0, 8), (8,), (8.5, 8), "ab"])
def test_postprocess_rejects_bad_size(size):
    with pytest.raises(DataError, match="size"):
        postprocess(np.zeros((1, 2, 4, 4), np.float32), size)


def test_postprocess_rejects_unknown_resize_mode():
    with pytest.raises(DataError, match="'nearest'"):
        postprocess(np.zeros((1, 2, 4, 4), np.float32), (8, 8), resize="nearest")


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_counts_are_rejected(threads):
    with pytest.raises(EdgesegError, match="num_threads"):
        preprocess(np.zeros((4, 4), np.int16), SPEC, num_threads=threads)
    with pytest.raises(EdgesegError, match="num_threads"):
        kernels.set_num_threads(threads)


def test_set_num_threads_round_trips():
    default = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        assert kernels.get_num_threads() == 1
    finally:
        kernels.set_num_threads(None)
    assert kernels.get_num_threads() == default


def test_big_endian_and_unaligned_input_are_handled():
    img = np.arange(64, dtype=">i2").reshape(8, 8)
    want = preprocess(img.astype(np.int16), SPEC)
    np.testing.assert_array_equal(preprocess(img, SPEC), want)
    raw = np.zeros(8 * 8 * 2 + 1, np.uint8)[1:].view(np.int16).reshape(8, 8)  # odd address
    raw[:] = img
    np.testing.assert_array_equal(preprocess(raw, SPEC), want)
