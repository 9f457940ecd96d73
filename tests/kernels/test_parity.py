"""C kernels against the numpy oracle (edgeseg.kernels.reference) on random inputs.

Float output must agree to 1e-5 (float16: within one float16 ulp of the oracle's float16, or 1e-5);
label maps must agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgeseg.kernels import largest_component, postprocess, preprocess, reference, resize_labels
from edgeseg.spec import PreprocessSpec

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INPUT_DTYPES = [np.uint8, np.int16, np.uint16, np.float32]


def assert_model_input_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == np.float16:
        # The oracle rounds float64 -> float16 once; the kernel rounds through float32, whose
        # error (a few 1e-7 around 0, where float16 has subnormals) may land on a neighbouring
        # float16 value. Allowed: one float16 ulp, or the 1e-5 for float output.
        ulp = np.maximum(np.spacing(np.abs(want)).astype(np.float64), 1e-5)
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert np.all(diff <= ulp), f"max float16 diff {diff.max()} exceeds one ulp and 1e-5"
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def random_slices(rng: np.random.Generator, dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype == np.float32:
        arr = rng.uniform(-2000, 4000, size=shape).astype(np.float32)
        return arr
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


@st.composite
def preprocess_cases(draw):
    dtype = draw(st.sampled_from(INPUT_DTYPES))
    n = draw(st.integers(1, 3))
    rows, cols = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    step_r, step_c = draw(st.sampled_from([1, 2, -1])), draw(st.sampled_from([1, 3, -2]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = random_slices(rng, dtype, (n, rows * abs(step_r), cols * abs(step_c)))
    images = base[:, :: step_r, :: step_c]  # a non-contiguous (possibly reversed) view
    if dtype == np.uint8:
        low = draw(st.floats(-10, 250))
    elif dtype == np.uint16:
        low = draw(st.floats(-10, 65000))
    else:
        low = draw(st.floats(-1500, 2500))
    width = draw(st.one_of(st.floats(0.5, 2.0), st.floats(2.0, 4000.0)))  # narrow and wide
    spec = PreprocessSpec(
        window=(low, low + width),
        size=(draw(st.integers(1, 64)), draw(st.integers(1, 64))),
        interpolation=draw(st.sampled_from(["bilinear", "area"])),
        mean=draw(st.floats(-1, 1)),
        std=draw(st.floats(0.1, 10)),
        dtype=draw(st.sampled_from(["float32", "float16"])),
    )
    return images, spec


@FAST
@example(case=(np.array([[[95, 130, 194, 217, 207, 235, 15]]], dtype=np.uint8),
               PreprocessSpec(window=(0.0, 1.5), size=(1, 9), mean=1.0, std=1.0, dtype="float16")))
@given(preprocess_cases())
def test_preprocess_matches_reference(case):
    images, spec = case
    got = preprocess(images, spec)
    want = reference.preprocess(images, spec)
    assert_model_input_close(got, want)


@pytest.mark.parametrize("interpolation", ["bilinear", "area"])
@pytest.mark.parametrize("size", [(1, 300), (300, 1), (1, 1), (37, 511)])
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
def test_preprocess_thin_and_odd_shapes(dtype, size, interpolation):
    rng = np.random.default_rng(7)
    for shape in [(1, 257), (257, 1), (129, 77)]:
        images = random_slices(rng, dtype, shape)
        spec = PreprocessSpec(window=(0.0, 200.0), size=size, interpolation=interpolation, mean=0.3, std=0.2)
        assert_model_input_close(preprocess(images, spec), reference.preprocess(images, spec))


@pytest.mark.slow
@pytest.mark.parametrize(
    "size,interpolation", [((256, 256), "bilinear"), ((256, 256), "area"), ((2048, 2048), "bilinear"), ((1, 1), "area")]
)
def test_preprocess_2048(size, interpolation):
    rng = np.random.default_rng(3)
    images = rng.integers(-1024, 3072, size=(2048, 2048), dtype=np.int16)
    spec = PreprocessSpec(window=(-160.0, 240.0), size=size, interpolation=interpolation, mean=0.5, std=0.25)
    assert_model_input_close(preprocess(images, spec), reference.preprocess(images, spec))


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_preprocess_same_numbers_on_any_thread_count(num_threads):
    rng = np.random.default_rng(11)
    images = rng.integers(-1024, 3072, size=(5, 70, 90), dtype=np.int16)
    spec = PreprocessSpec(window=(-100.0, 400.0), size=(33, 47))
    one = preprocess(images, spec, num_threads=1)
    np.testing.assert_array_equal(preprocess(images, spec, num_threads=num_threads), one)


@st.composite
def logits_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    kind = draw(st.sampled_from(["normal", "integers", "smooth"]))
    if kind == "normal":
        logits = rng.normal(0, draw(st.sampled_from([1e-3, 1.0, 1e4])), size=shape)
    elif kind == "integers":  # many exact ties, before and after interpolation
        logits = rng.integers(-2, 3, size=shape).astype(np.float64)
    else:
        yy, xx = np.mgrid[: shape[2], : shape[3]]
        logits = np.stack([np.sin(yy / (k + 2.0)) + np.cos(xx / (k + 1.5)) for k in range(shape[1])])
        logits = np.broadcast_to(logits, shape)
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    size = (draw(st.integers(1, 60)), draw(st.integers(1, 60)))
    return np.ascontiguousarray(logits, dtype=dtype), size, draw(st.sampled_from(["logits", "labels"])), draw(st.booleans())


@FAST
@given(logits_cases())
def test_postprocess_matches_reference(case):
    logits, size, resize, keep_largest = case
    got = postprocess(logits, size, resize=resize, keep_largest=keep_largest)
    want = reference.postprocess(logits, size, keep_largest=keep_largest, resize=resize)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_postprocess_2x256_to_512_matches_reference():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(2, 3, 256, 256)).astype(np.float32)
    for keep_largest in (False, True):
        got = postprocess(logits, (512, 512), keep_largest=keep_largest)
        np.testing.assert_array_equal(got, reference.postprocess(logits, (512, 512), keep_largest=keep_largest))


@st.composite
def label_maps(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 30)), draw(st.integers(1, 30)))
    classes = draw(st.integers(1, 4))
    density = draw(st.floats(0.05, 0.95))
    labels = rng.integers(1, classes + 1, size=shape) * (rng.random(shape) < density)
    return labels.astype(np.uint8), draw(st.integers(0, classes + 1))


@settings(max_examples=150, deadline=None)
@given(label_maps())
def test_largest_component_matches_scipy(case):
    labels, num_classes = case
    got = largest_component(labels, num_classes)
    np.testing.assert_array_equal(got, reference.largest_component(labels, num_classes))


@FAST
@given(label_maps(), st.integers(1, 50), st.integers(1, 50))
def test_resize_labels_matches_reference(case, rows, cols):
    labels, _ = case
    np.testing.assert_array_equal(resize_labels(labels, (rows, cols)), reference.resize_labels(labels, (rows, cols)))


@st.composite
def organ_logits(draw):
    """Two-class logits as a segmentation model gives them: background clearly ahead almost
    everywhere, a few blobs of foreground, and optionally pixels whose two logits (nearly) tie
    at the edge of what the kernel may skip as clearly background."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, rows, cols = draw(st.integers(1, 2)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    scale = draw(st.sampled_from([1e-3, 1.0, 8.0, 1e4]))
    yy, xx = np.mgrid[:rows, :cols]
    d = np.full((n, rows, cols), -scale)
    for i in range(n):
        for _ in range(draw(st.integers(0, 3))):
            cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(0.5, max(rows, cols) / 2)
            d[i] = np.maximum(d[i], scale * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
    # Near-ties: background pixels whose margin is a tiny fraction of the largest logit.
    ties = rng.random(d.shape) < draw(st.sampled_from([0.0, 0.01, 0.2]))
    d = np.where(ties & (d < 0), -scale * rng.choice([0.0, 2.0**-20, 2.0**-17, 2.0**-16], size=d.shape), d)
    base = rng.normal(0, scale, size=d.shape)
    logits = np.stack([base, base + d], axis=1)
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    size = (draw(st.integers(1, 90)), draw(st.integers(1, 90)))
    return np.ascontiguousarray(logits, dtype=dtype), size, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(organ_logits())
def test_two_class_background_skipping_matches_reference(case):
    logits, size, keep_largest = case
    got = postprocess(logits, size, keep_largest=keep_largest)
    np.testing.assert_array_equal(got, reference.postprocess(logits, size, keep_largest=keep_largest))


def test_two_class_organ_256_to_512_matches_reference():
    from edgeseg.bench.kernels import blob_logits

    logits = blob_logits(3, classes=2, size=256, seed=3)
    logits[2, 0, 100:110, 40:200] = logits[2, 1, 100:110, 40:200]  # a band of exact ties
    logits[1, 0, 7, 9] = 3e38  # past the float32 fast path: decided in double
    for keep_largest in (False, True):
        got = postprocess(logits, (512, 512), keep_largest=keep_largest)
        np.testing.assert_array_equal(got, reference.postprocess(logits, (512, 512), keep_largest=keep_largest))


@st.composite
def blob_label_maps(draw):
    """Label maps of wide blobs: runs much longer than the kernel's eight-byte steps."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 130))
    classes = draw(st.integers(2, 4))
    labels = np.zeros((rows, cols), np.uint8)
    yy, xx = np.mgrid[:rows, :cols]
    for _ in range(draw(st.integers(0, 6))):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        ry, rx = rng.uniform(0.5, rows / 2 + 1), rng.uniform(0.5, cols / 2 + 1)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(1, classes)
    return labels[None], classes


@settings(max_examples=150, deadline=None)
@given(blob_label_maps())
def test_largest_component_of_wide_blobs_matches_scipy(case):
    labels, num_classes = case
    np.testing.assert_array_equal(largest_component(labels, num_classes),
                                  reference.largest_component(labels, num_classes))
