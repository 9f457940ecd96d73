"""Where an INT8 bundle departs from FP32: per held-out slice and class, and per activation tensor.

Takes one fold's export folder of ``edgeseg cv --int8`` (``OUT/foldK/int8-...``, whose bundle must
hold ``model.int8.onnx``: export with ``--max-dice-drop-int8 1`` to keep a graph the gate refuses)
and prints

1. for ONNX Runtime INT8 and OpenVINO INT8, against the FP32 ONNX graph on ONNX Runtime: logit
   differences, and per held-out slice the pixels each class gains or loses;
2. every activation tensor of the Q/DQ graph (each DequantizeLinear output) on ONNX Runtime
   against OpenVINO, in units of that tensor's quantisation step, so the first layer where the
   two runtimes part is visible (both run the same quantised graph: they should agree within
   a step or two of rounding).

Usage: python benchmarks/int8_divergence.py OUT/fold0/int8-entropy-64-max1-cpu [--slices 4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def held_out_images(folder: Path):
    """(images, truth, case ids, class names, bundle path, manifest) of the fold's held-out slices."""
    from edgeseg.data.slice_set import SliceSet
    from edgeseg.evaluate.cross_validation import fold_label_map, held_out_volumes
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.runtime.manifest import read_manifest

    record = json.loads((folder / "export.json").read_text())
    payload = read_checkpoint(record["checkpoint"])
    bundle = folder / record["bundle"]
    manifest = read_manifest(bundle)
    volumes = held_out_volumes(record["checkpoint"], payload)
    slices = SliceSet.from_volumes(volumes, manifest.spec, fold_label_map(payload))
    cases = [v.case_id for v in volumes for _ in range(v.num_slices)]
    return slices.images, slices.labels, cases, list(payload["class_names"]), bundle, manifest


def per_slice_changes(images, truth, cases, names, bundle, manifest) -> None:
    from edgeseg.runtime.selection import select_runner
    from edgeseg.runtime.segmenter import Segmenter

    logits = {}
    for backend in ("onnxruntime:fp32", "onnxruntime:int8", "openvino:int8"):
        with Segmenter(manifest.spec, manifest.labels, select_runner(bundle, manifest, backend, 1)) as seg:
            logits[backend] = seg.logits(images)
    reference = logits["onnxruntime:fp32"]
    ref_mask = reference.argmax(1)
    for backend in ("onnxruntime:int8", "openvino:int8"):
        mask, diff = logits[backend].argmax(1), np.abs(logits[backend] - reference)
        pixels = {names[c]: (int((ref_mask == c).sum()), int((mask == c).sum())) for c in range(1, len(names))}
        print(f"{backend}: |logit difference| max {diff.max():.3f} p99 {np.percentile(diff, 99):.3f} "
              f"mean {diff.mean():.4f}; pixels per class FP32 -> INT8 {pixels}")
        for i, case in enumerate(cases):
            changed = {names[c]: int(((mask[i] == c) != (ref_mask[i] == c)).sum()) for c in range(1, len(names))}
            print(f"  slice {case}: pixels changed {changed}, FP32 pixels "
                  f"{[int((ref_mask[i] == c).sum()) for c in range(1, len(names))]}, truth pixels "
                  f"{[int((truth[i] == c).sum()) for c in range(1, len(names))]}")


def activation_steps(images, bundle: Path) -> None:
    import onnx
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    path = bundle / "model.int8.onnx"
    model = onnx.load(str(path))
    constants = {i.name: i for i in model.graph.initializer}
    tensors = [(n.output[0], float(numpy_helper.to_array(constants[n.input[1]]))) for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] not in constants and n.input[1] in constants]
    for name, _ in tensors:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images})))
    core = ov.Core()
    graph = core.read_model(str(path))
    graph.add_outputs([name for name, _ in tensors])
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    ov_out = {name: value for port, value in core.compile_model(graph, "CPU", config)(images).items()
              for name in port.get_names()}
    plain = core.compile_model(core.read_model(str(path)), "CPU", config)(images)[0]
    print(f"logits, ONNX Runtime vs OpenVINO: max {np.abs(ort_out['logits'] - plain).max():.4f} "
          f"(with the tensors exposed: {np.abs(ort_out['logits'] - ov_out['logits']).max():.4f})")
    for name, scale in tensors:
        a, b = ort_out[name], ov_out[name]
        steps = np.abs(a - b) / scale
        whole = float(np.mean(b == np.round(b)))
        print(f"{name[:64]:<64} step {scale:.4g}: |ORT - OpenVINO| max {steps.max():6.2f} mean {steps.mean():.3f} steps; "
              f"OpenVINO values that are whole numbers {whole:.2f} (ORT {float(np.mean(a == np.round(a))):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--slices", type=int, default=4, help="Held-out slices for the per-tensor comparison.")
    args = parser.parse_args()
    images, truth, cases, names, bundle, manifest = held_out_images(args.folder)
    per_slice_changes(images, truth, cases, names, bundle, manifest)
    activation_steps(np.ascontiguousarray(images[: args.slices]), bundle)


if __name__ == "__main__":
    main()
