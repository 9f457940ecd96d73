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
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.spec import PreprocessSpec

    root = tmp_path_factory.mktemp("bench")
    config = ModelConfig(num_classes=2, base=32, depth=4)
    save_checkpoint(root / "model.pt", build_model(config).eval(), config,
                    PreprocessSpec(window=(-200.0, 300.0), size=(256, 256)), ["background", "liver"])
    settings = ExportSettings(formats=("onnx",), int8=True, calib_slices=16, max_batch=8,
                              max_dice_drop={"fp32": 0.0, "fp16": 1.0, "int8": 1.0})
    export_bundle(root / "model.pt", root / "bundle", settings, calib="phantom:cases=2,size=256,slices=8",
                  verify_data="phantom:cases=1,size=256,slices=8,seed=3", progress=False, echo=lambda text: None)
    return root / "bundle"


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
