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


def test_int8_graph_is_symmetric_per_channel_qdq_and_runs_on_cpu(bundle, slices, reference):
    from onnx import numpy_helper

    graph = onnx.load(str(bundle["bundle"] / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric, signed
    weight_scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                     and inits[n.input[0]].ndim == 4]
    assert weight_scales and all(s.size > 1 for s in weight_scales)  # one scale per output channel
    out = run_with_runtime(bundle["bundle"], "onnx", "int8", slices)
    assert masks_dice(out, reference) >= 0.98
