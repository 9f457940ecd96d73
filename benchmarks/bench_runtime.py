"""pytest-benchmark: each runner on the default model (base 32, depth 4, 256x256) at FP32 and INT8,
and the whole Segmenter around the fastest one.

The bundle is exported once per run by ``edgeseg.export`` from an untrained checkpoint (random
weights: latency does not depend on them, so the INT8 gate's Dice limit is lifted; FP32 must
still match); ``EDGESEG_BENCH_BUNDLE`` points at an existing bundle
instead (e.g. ``runs/demo/bundle``). Compare within one run:
``pytest benchmarks/bench_runtime.py --benchmark-only --benchmark-group-by=param:batch``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.bench.runtime import ct_slices
from edgeseg.kernels import preprocess
from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest
from edgeseg.runtime.selection import candidates

RUNNERS = [(r, p) for r in ("onnxruntime", "openvino") for p in ("fp32", "int8")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    if os.environ.get("EDGESEG_BENCH_BUNDLE"):
        return Path(os.environ["EDGESEG_BENCH_BUNDLE"])
    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).parent))
    from random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bench") / "bundle", base=32, depth=4, size=256, int8=True)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize(("runner", "precision"), RUNNERS, ids=[f"{r}-{p}" for r, p in RUNNERS])
def test_runner(benchmark, bundle, runner, precision, batch):
    labels = {c.label for c in candidates(read_manifest(bundle))}
    if f"{runner}:{precision}" not in labels:
        pytest.skip(f"{runner}:{precision} is not installed or not in the bundle")
    with Segmenter.load(bundle, backend=f"{runner}:{precision}") as seg:
        x = preprocess(ct_slices(batch, 512), seg.spec)
        benchmark.group = f"model only, batch {batch}"
        benchmark(seg.infer, x)


@pytest.mark.parametrize("what", ["model only", "predict", "predict_volume 32"])
def test_segmenter(benchmark, bundle, what):
    with Segmenter.load(bundle) as seg:
        volume = ct_slices(32, 512)
        benchmark.group = f"segmenter ({seg.backend})"
        if what == "model only":
            x = preprocess(volume[:1], seg.spec)
            benchmark(seg.infer, x)
        elif what == "predict":
            benchmark(seg.predict, volume[0])
        else:
            labels = benchmark(seg.predict_volume, volume)
            assert labels.shape == volume.shape and labels.dtype == np.uint8
