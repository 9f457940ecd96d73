"""FP16 artifact: the FP32 ONNX graph converted to float16, plus a true half-precision reference.

Conversion uses ONNX Runtime's float16 converter (the maintained copy of onnxconverter-common's
``convert_float_to_float16``) with a block list, not hand graph surgery. Inputs and outputs stay
float32 (a Cast at each end), so every artifact of a bundle takes and returns the same tensors.

ONNX Runtime's CPU provider computes most FP16 operators in FP32, so running the FP16 graph
there cannot reveal FP16 overflow or rounding. ``half_precision_logits`` therefore also runs
the PyTorch model with float16 weights and activations on the CPU, which stores every
intermediate in FP16; the gate checks both.

torch's CPU half convolutions are slow (no FP16 hardware path on AVX-512 CPUs without
AVX512-FP16): 27 minutes for 64 slices of the default U-Net at 256x256 in the default memory
layout. In channels-last layout the same float16 kernels ran 18-24x faster here (see
docs/results.md), so that is the layout used. Even so, the gate runs them on a stratified subset of the held-out slices by
default (``FP16_CHECK_MODES``: "subset", with the extremes of intensity, with and without
target); "full" runs every held-out slice.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edgeseg.errors import require

# Ops kept in FP32 on top of the converter's defaults: softmax and normalisation layers
# accumulate sums that overflow FP16's 65504 on large activations. (Batch norm is folded
# into the convolutions at export; a model with unfolded normalisation keeps it in FP32.)
EXTRA_BLOCKED_OPS = ("Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization",
                     "LayerNormalization", "GroupNormalization", "ReduceMean", "ReduceSum")
HALF_EMULATION = "torch-float16-cpu"
FP16_CHECK_MODES = ("subset", "full")
ORT_EMULATION = "onnxruntime-cpu (FP16 graph, most ops computed in FP32)"


def convert_fp16(src: str | Path, dst: str | Path) -> dict:
    """Write the float16 version of the FP32 ONNX graph ``src`` to ``dst``; returns the settings.

    Initialisers outside FP16 range are clipped by the converter to +-1e4 (``max_finite_val``);
    the metadata (spec, labels) is carried over.
    """
    onnx = require("onnx", "export", "FP16 conversion")
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    graph = onnx.load(str(src))
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(EXTRA_BLOCKED_OPS))
    half = convert_float_to_float16(graph, keep_io_types=True, op_block_list=blocked)
    _sort_nodes(half.graph)
    onnx.checker.check_model(half, full_check=True)
    onnx.save(half, str(dst))
    present = {node.op_type for node in graph.graph.node}
    return {"converter": "onnxruntime.transformers.float16", "keep_io_types": True,
            "kept_fp32_ops": sorted(present & set(blocked))}


def half_precision_logits(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (float32) of ``model`` run in real float16 on the CPU: weights, activations and
    outputs stored in FP16, so overflow shows as inf/NaN and rounding as it would on a GPU."""
    import torch

    half = copy.deepcopy(model).eval().half().to(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).half()
            logits = half(batch.to(memory_format=torch.channels_last))
            out.append(logits.float().contiguous().numpy())
    return np.concatenate(out)


def half_check_slices(images: np.ndarray, truth: np.ndarray | None, mode: str, count: int) -> np.ndarray:
    """Indices of the held-out slices the float16 check runs on: all of them for ``mode`` "full",
    else ``count`` chosen like calibration slices (equally from each combination of classes, each spread
    over mean intensity so the brightest and darkest slices, where FP16 overflow and rounding
    bite first, are always in)."""
    from edgeseg.export.int8 import classes_present, stratify_slices

    if mode not in FP16_CHECK_MODES:
        raise ValueError(f"fp16 check mode must be one of {FP16_CHECK_MODES}, got {mode!r}")
    if mode == "full" or count >= len(images):
        return np.arange(len(images))
    keys = [(None if truth is None else classes_present(truth[i]), float(images[i].mean())) for i in range(len(images))]
    return np.asarray(stratify_slices(keys, count), dtype=np.int64)


def _sort_nodes(graph) -> None:
    """Reorder nodes topologically, keeping the original order where it is already valid.

    The converter appends the input Casts after the nodes that read them; ONNX Runtime
    accepts that, but the ONNX standard (and TensorRT's parser) wants producers first.
    """
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(name in ready for name in n.input)]
        if not progress:
            raise ValueError("FP16 graph has a cycle or an input nobody produces")
        for node in progress:
            ordered.append(node)
            ready.update(node.output)
        pending = [n for n in pending if all(n is not m for m in progress)]
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)
