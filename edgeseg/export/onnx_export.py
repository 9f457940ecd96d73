"""ONNX FP32 artifact: exported with a dynamic batch axis, checked, simplified, and labelled."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from edgeseg import __version__
from edgeseg.errors import require
from edgeseg.runtime.manifest import INPUT_NAME, OUTPUT_NAME
from edgeseg.spec import PreprocessSpec

log = logging.getLogger("edgeseg.export")

OPSET = 17
# The keys of the graph's metadata_props that carry the spec (canonical JSON) and the labels.
SPEC_KEY, LABELS_KEY = "edgeseg_spec", "edgeseg_labels"


def export_onnx(model, example, spec: PreprocessSpec, labels: dict[int, str], path: str | Path) -> dict:
    """Write ``model`` as ONNX (opset 17, input ``image`` / output ``logits``, batch axis dynamic).

    The graph passes ``onnx.checker`` with full checks and shape inference; it is then
    simplified with onnxslim, and the simplified graph is kept only if ONNX Runtime gives the
    same logits (within 1e-5) as the unsimplified one on ``example``. The spec JSON, labels and
    edgeseg version are stored in ``metadata_props``. Returns what was done, for the manifest.
    """
    import torch

    onnx = require("onnx", "export", "ONNX export")
    with warnings.catch_warnings():
        # The torch.export-based exporter needs onnxscript and gains nothing for a plain CNN;
        # the TorchScript-based one is deprecated but exact here (BN folded, 1e-7 from eager).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    graph = onnx.load(str(path))
    simplified = _simplify(graph, str(path), example.numpy())
    if simplified is not None:
        graph = simplified
    graph = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True)
    onnx.checker.check_model(graph, full_check=True)
    set_metadata(graph, spec, labels)
    onnx.save(graph, str(path))
    return {"opset": OPSET, "simplified": simplified is not None, "nodes": len(graph.graph.node)}


def set_metadata(graph, spec: PreprocessSpec, labels: dict[int, str]) -> None:
    """Store spec JSON, labels and edgeseg version in the graph's ``metadata_props``."""
    values = {SPEC_KEY: spec.to_json(),
              LABELS_KEY: json.dumps({str(k): v for k, v in sorted(labels.items())}),
              "edgeseg_version": __version__}
    keep = [p for p in graph.metadata_props if p.key not in values]
    del graph.metadata_props[:]
    graph.metadata_props.extend(keep)
    for key, value in values.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> tuple[PreprocessSpec, dict[int, str]]:
    """The spec and labels stored in an ONNX artifact's ``metadata_props``."""
    onnx = require("onnx", "export", "reading ONNX metadata")
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return PreprocessSpec.from_json(props[SPEC_KEY]), {int(k): v for k, v in json.loads(props[LABELS_KEY]).items()}


def run_onnx(path: str | Path, batch: np.ndarray, threads: int = 0) -> np.ndarray:
    """Logits of an ONNX file on ONNX Runtime CPU for one float32 batch."""
    session = ort_session(path, threads)
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0].astype(np.float32)


def ort_session(path: str | Path, threads: int = 0):
    """A CPU ONNX Runtime session with full graph optimisation, as the runtime creates it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _simplify(graph, path: str, example: np.ndarray):
    """The onnxslim-simplified graph if onnxslim is installed and outputs stay equal, else None."""
    try:
        import onnxslim
    except ImportError:
        log.info("onnxslim not installed; ONNX graph left unsimplified")
        return None
    import onnx

    slim = onnxslim.slim(graph)
    trial = path + ".slim"
    try:
        onnx.save(slim, trial)
        same = np.allclose(run_onnx(path, example), run_onnx(trial, example), rtol=0, atol=1e-5)
    finally:
        Path(trial).unlink(missing_ok=True)
    if not same:
        log.warning("onnxslim changed the logits; keeping the unsimplified graph")
        return None
    return slim
