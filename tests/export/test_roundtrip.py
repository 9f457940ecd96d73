"""Each artifact, loaded from the bundle, gives the eager PyTorch model's output on real slices."""

import json

import numpy as np
import onnx
import pytest

from edgeseg.runtime.manifest import read_manifest, verify_artifacts
from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner


def masks_dice(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = a.argmax(1) == 1, b.argmax(1) == 1
    return 2.0 * np.logical_and(pa, pb).sum() / max(1, pa.sum() + pb.sum())


def run_with_runtime(folder, fmt, precision, images):
    """Load an artifact the way the deployed runtime does: manifest, hash check, runner."""
    manifest = read_manifest(folder)
    entry = manifest.artifact(fmt, precision)
    verify_artifacts(folder, manifest, only=[entry])
    with OnnxRuntimeRunner(folder / entry.file, entry, manifest.inputs[0], manifest.outputs[0], manifest.max_batch) as runner:
        return np.concatenate([runner.infer(images[i : i + 4]) for i in range(0, len(images), 4)])


def test_masks_are_not_trivial(reference):
    fg = (reference.argmax(1) == 1).mean()
    assert 0.01 < fg < 0.9


def test_torchscript_matches_eager_and_carries_spec(bundle, eager, slices, reference):
    import torch

    from edgeseg.export.torchscript import load_torchscript
    from edgeseg.models.checkpoint import checkpoint_spec

    module, spec, labels = load_torchscript(bundle["bundle"] / "model.ts")
    with torch.no_grad():
        out = module(torch.from_numpy(slices)).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-4)
    assert spec == checkpoint_spec(eager[1])
    assert labels == dict(enumerate(eager[1]["class_names"]))


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_fp32_matches_eager_at_any_batch(bundle, slices, reference, batch):
    out = run_with_runtime(bundle["bundle"], "onnx", "fp32", slices[:batch])
    np.testing.assert_allclose(out, reference[:batch], atol=1e-4)


def test_onnx_metadata_holds_spec_and_labels(bundle, eager):
    from edgeseg.models.checkpoint import checkpoint_spec

    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        graph = onnx.load(str(bundle["bundle"] / name))
        props = {p.key: p.value for p in graph.metadata_props}
        assert json.loads(props["edgeseg_spec"]) == checkpoint_spec(eager[1]).to_dict(), name
        assert json.loads(props["edgeseg_labels"]) == {str(i): n for i, n in enumerate(eager[1]["class_names"])}
        assert graph.opset_import[0].version >= 17


def test_fp16_graph_is_half_inside_float_outside(bundle, slices, reference):
    graph = onnx.load(str(bundle["bundle"] / "model.fp16.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in graph.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    out = run_with_runtime(bundle["bundle"], "onnx", "fp16", slices)
    np.testing.assert_allclose(out, reference, atol=0.05)
    assert masks_dice(out, reference) >= 0.998


def _qdq_zero_points(graph) -> tuple[list[np.ndarray], ...]:
    """(weight zero points, activation zero points, weight scales, quantised weights) of a Q/DQ
    graph: a weight is a 4-D initializer that a DequantizeLinear reads directly."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weights, activations, scales = [], [], []
    values = []
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(n.input) < 3:
            continue
        source = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and source is not None and source.ndim == 4:
            weights.append(inits[n.input[2]])
            scales.append(inits[n.input[1]])
            values.append(source)
        else:
            activations.append(inits[n.input[2]])
    return weights, activations, scales, values


def test_int8_graph_is_the_cpu_scheme_and_runs_on_cpu(bundle, slices, reference):
    """The default scheme: signed symmetric per-channel 7-bit weights, unsigned activations with
    zero points (u8 x s8 pair sums then stay under 2**15: no saturation on CPUs lacking VNNI)."""
    graph = onnx.load(str(bundle["bundle"] / "model.int8.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}
    weights, activations, scales, values = _qdq_zero_points(graph)
    largest = max(int(np.abs(v.astype(np.int32)).max()) for v in values)
    assert largest == 64 and 2 * 255 * largest < 2**15 - 1  # 7 bits, all of them used
    assert weights and all(z.dtype == np.int8 and not z.any() for z in weights)  # symmetric, signed
    assert scales and all(s.size > 1 for s in scales)  # one scale per output channel
    assert activations and all(z.dtype == np.uint8 for z in activations)
    assert any(z.any() for z in activations)  # the input's range is not symmetric about 0: a real zero point
    assert read_manifest(bundle["bundle"]).artifact("onnx", "int8").extra["int8_scheme"] == "cpu"
    out = run_with_runtime(bundle["bundle"], "onnx", "int8", slices)
    assert masks_dice(out, reference) >= 0.98


def test_tensorrt_scheme_is_signed_with_zero_points_0_everywhere(bundle, checkpoint, slices, tmp_path):
    """What TensorRT takes for explicit quantisation: every zero point int8 and 0, weights per channel."""
    from edgeseg.export.int8 import CalibrationSet, quantize_int8
    from edgeseg.models.checkpoint import checkpoint_spec, read_checkpoint

    spec = checkpoint_spec(read_checkpoint(checkpoint))
    calib = CalibrationSet(images=slices, data_hash="0" * 64, summary={"slices": len(slices)})
    record = quantize_int8(bundle["bundle"] / "model.onnx", tmp_path / "trt.onnx", calib, spec, "minmax",
                           tmp_path / "cache", progress=False, scheme="tensorrt")
    weights, activations, scales, values = _qdq_zero_points(onnx.load(str(tmp_path / "trt.onnx")).graph)
    assert weights and activations and all(s.size > 1 for s in scales)
    assert max(int(np.abs(v.astype(np.int32)).max()) for v in values) == 127  # 8-bit weights
    assert all(z.dtype == np.int8 and not z.any() for z in weights + activations)
    assert record["scheme"] == "tensorrt" and record["settings"]["activation_type"] == "QInt8"
    again = quantize_int8(bundle["bundle"] / "model.onnx", tmp_path / "cpu.onnx", calib, spec, "minmax",
                          tmp_path / "cache", progress=False, scheme="cpu")
    assert again["cache"] == "miss" and again["cache_key"] != record["cache_key"]  # the scheme is part of the key
