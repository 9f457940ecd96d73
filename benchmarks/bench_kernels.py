"""pytest-benchmark: C kernels vs the numpy oracle, OpenCV and torch on the same workloads.

Workloads and the OpenCV/torch equivalents come from edgeseg.bench.kernels, which also prints all
ratios in one run (``python -m edgeseg.bench.kernels``). Compare with
``pytest benchmarks --benchmark-only --benchmark-group-by=param:workload``.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.bench import kernels as work
from edgeseg.kernels import postprocess, preprocess, reference
from edgeseg.spec import PreprocessSpec

PRE = {
    "512->256": (1, (256, 256), "bilinear"),
    "512->128": (1, (128, 128), "bilinear"),
    "512->128 area": (1, (128, 128), "area"),
    "64x512->256": (64, (256, 256), "bilinear"),
}


@pytest.fixture(scope="module")
def slices():
    return {1: work.hu_slices(1), 64: work.hu_slices(64, seed=1)}


@pytest.fixture(scope="module")
def single_threaded_libs():
    cv2 = pytest.importorskip("cv2")
    cv2.setNumThreads(1)
    return cv2


def _pre_case(slices, workload):
    count, size, interp = PRE[workload]
    return slices[count], PreprocessSpec(window=work.WINDOW, size=size, interpolation=interp)


@pytest.mark.parametrize("workload", list(PRE))
@pytest.mark.parametrize("impl", ["C 1 thread", "C 2 threads", "numpy", "OpenCV", "torch"])
def test_preprocess(benchmark, slices, workload, impl):
    images, spec = _pre_case(slices, workload)
    benchmark.group = f"pre {workload}"
    if impl.startswith("C"):
        threads = 1 if impl == "C 1 thread" else 2
        out = benchmark(preprocess, images, spec, num_threads=threads)
    elif impl == "numpy":
        out = benchmark.pedantic(reference.preprocess, (images, spec), rounds=3 if len(images) > 1 else 10)
    elif impl == "OpenCV":
        cv2 = pytest.importorskip("cv2")
        cv2.setNumThreads(1)
        out = benchmark(work.opencv_preprocess, cv2, images, spec)
    else:
        torch = pytest.importorskip("torch")
        torch.set_num_threads(1)
        out = benchmark(work.torch_preprocess, torch, images, spec)
    assert out.shape == (len(images), 1, *spec.size)


@pytest.mark.parametrize("keep_largest", [False, True])
@pytest.mark.parametrize("impl", ["C", "numpy", "OpenCV", "torch"])
def test_postprocess(benchmark, impl, keep_largest):
    logits = work.blob_logits()
    benchmark.group = f"post 2x256->512 keep_largest={keep_largest}"
    if impl == "C":
        out = benchmark(postprocess, logits, (512, 512), keep_largest=keep_largest, num_threads=1)
    elif impl == "numpy":
        out = benchmark.pedantic(reference.postprocess, (logits, (512, 512), keep_largest), rounds=5)
    elif impl == "OpenCV":
        cv2 = pytest.importorskip("cv2")
        cv2.setNumThreads(1)
        out = benchmark(work.opencv_postprocess, cv2, logits, (512, 512), keep_largest)
    else:
        if keep_largest:
            pytest.skip("torch has no connected-component labelling")
        torch = pytest.importorskip("torch")
        torch.set_num_threads(1)
        out = benchmark(work.torch_postprocess, torch, logits, (512, 512))
    assert out.shape == (1, 512, 512) and out.dtype == np.uint8
