"""TensorRT: engines for another GPU fall back with a warning; on a GPU, the native runner matches ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
import logging

import numpy as np
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.runtime.manifest import read_manifest, sha256_file
from edgeseg.runtime.selection import Candidate, instantiate


def _add_engine(bundle, plan: bytes, fingerprint: dict, precision: str = "fp16") -> None:
    name = f"model.{precision}.plan"
    (bundle / name).write_bytes(plan)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"].append({"file": name, "format": "tensorrt", "precision": precision,
                                  "sha256": sha256_file(bundle / name), "bytes": len(plan),
                                  "fingerprint": fingerprint})
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_engine_that_cannot_run_here_falls_back_with_a_warning(bundle_copy, caplog):
    _add_engine(bundle_copy, b"engine bytes of another machine",
                {"gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0", "tensorrt": "10.0.1"})
    with caplog.at_level(logging.WARNING, logger="edgeseg"), \
            Segmenter.load(bundle_copy, backend=["tensorrt", "onnxruntime:fp32"]) as seg:
        assert seg.backend == "onnxruntime:fp32"
    assert "backend tensorrt:fp16 unavailable" in caplog.text


def _gpu_tensorrt() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (pip install 'edgeseg[tensorrt]')"
    try:
        from edgeseg.runtime.runners.tensorrt import machine_fingerprint

        machine_fingerprint()
    except Exception as exc:  # no CUDA driver or device
        return f"no usable CUDA GPU: {exc}"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_gpu_tensorrt() is not None, reason=str(_gpu_tensorrt()))
def test_native_engine_matches_onnxruntime(bundle_copy):
    import onnxruntime as ort
    import tensorrt as trt

    from edgeseg.runtime.runners.tensorrt import machine_fingerprint

    manifest = read_manifest(bundle_copy)
    shape = tuple(manifest.inputs[0].shape[1:])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((bundle_copy / "model.onnx").read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, *shape), (manifest.max_batch, *shape), (manifest.max_batch, *shape))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    _add_engine(bundle_copy, bytes(plan), machine_fingerprint(), precision="fp32")
    manifest = read_manifest(bundle_copy)
    batch = np.random.default_rng(0).uniform(-1, 1, (3, *shape)).astype(np.float32)
    expected = ort.InferenceSession(str(bundle_copy / "model.onnx")).run(None, {"image": batch})[0]
    entry = manifest.artifact("tensorrt", "fp32")
    with instantiate(bundle_copy, manifest, Candidate("tensorrt", entry), threads=0) as runner:
        np.testing.assert_allclose(runner.infer(batch), expected, atol=1e-3, rtol=1e-3)
