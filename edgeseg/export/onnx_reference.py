"""The gate's reference where PyTorch or the checkpoint is not there: the bundle's own FP32 ONNX
graph on ONNX Runtime's CPU provider (``onnxruntime-fp32-cpu``).

A deployment machine with the torch-free runtime has the bundle but neither torch nor, often, the
checkpoint. The export's gate already compared the FP32 graph on ONNX Runtime CPU with the FP32
PyTorch model on the held-out slices, and passed it as identical (masks equal wherever the two
best logits are 1e-4 or more apart; logits typically within 1e-5): that row of ``parity.json``,
for the very bytes the manifest lists (its sha256), is the link of the chain
PyTorch -> ``model.onnx`` on ONNX Runtime -> the runner scored here, and is copied into the
record. Without it (no FP32 graph, a row of other bytes, a failed or missing row) there is no
chain and the gate is refused. The held-out slices are ``--verify-data`` or the export's own data
where ``parity.json`` names data readable here (a phantom, or a path that exists); the
checkpoint's label mapping is not in the bundle, so labels are read as class ``i`` = label value
``i``, the default of every recipe with one label value per class.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import DataError
from edgeseg.export.verify import VerifySet, load_verify_set
from edgeseg.runtime.manifest import ArtifactEntry, Manifest, network_tensors

REFERENCE = "onnxruntime-fp32-cpu"
TORCH_REFERENCE = "pytorch-fp32-eager-cpu"


def reference_link(manifest: Manifest, parity: dict) -> tuple[ArtifactEntry, dict[str, Any]]:
    """The FP32 ONNX artifact and what the export's gate recorded of it against PyTorch (the
    chain's link); DataError when the bundle holds no such passed comparison of these bytes."""
    entry = next((e for e in manifest.artifacts if e.format == "onnx" and e.precision == "fp32"), None)
    if entry is None:
        raise DataError("the bundle has no FP32 ONNX graph to be the gate's reference without torch; "
                        "run edgeseg gate where torch is installed, with --checkpoint")
    against = parity.get("reference") or TORCH_REFERENCE
    row = next((r for r in parity["results"] if r.get("file") == entry.file and r.get("runner") == "onnxruntime"
                and r.get("sha256") == entry.sha256 and not r.get("reference")), None)
    if row is None or row.get("passed") is not True or "onnxruntime" in entry.excluded:
        raise DataError(f"parity.json records no passed check of {entry.file} (sha256 {entry.sha256[:12]}...) on "
                        f"onnxruntime against {against}, so it cannot stand in for the PyTorch model; run edgeseg "
                        f"gate where torch is installed, with --checkpoint")
    return entry, {"file": entry.file, "sha256": entry.sha256, "against": against, "run_on": row.get("run_on"),
                   "max_abs": row.get("max_abs"), "p99_abs": row.get("p99_abs"),
                   "changed_decided_pixels": row.get("changed_decided_pixels"),
                   "slices": parity.get("slices"), "data": parity.get("data")}


def held_out_without_torch(manifest: Manifest, parity: dict, verify_data: str | None,
                           intensity: str | None) -> VerifySet:
    """The held-out slices without the checkpoint: ``verify_data``, else the export's recorded
    data and cases where they are readable here; DataError naming ``--verify-data`` otherwise."""
    from edgeseg.data.open import parse_phantom_spec

    payload: dict[str, Any] = {"class_names": [manifest.labels[c] for c in sorted(manifest.labels)]}
    recorded, cases = parity.get("data"), list(parity.get("cases") or [])
    if verify_data is None:
        here = isinstance(recorded, str) and (parse_phantom_spec(recorded) is not None or Path(recorded).exists())
        if not here or not cases:
            raise DataError(f"edgeseg gate without torch or --checkpoint needs --verify-data DATA: the export's "
                            f"held-out data {recorded} is not found here")
        # The export's cases of its data, read as training read them where the bundle says how.
        payload.update(train_config={"data": recorded, "intensity": manifest.source.get("intensity")},
                       split={"val": cases})
    return load_verify_set(payload, manifest.spec, verify_data, int(parity["slices"]), intensity)


def reference_logits(folder: Path, manifest: Manifest, entry: ArtifactEntry, images: np.ndarray,
                     progress: bool) -> np.ndarray:
    """The FP32 ONNX graph's logits on ``images``, through the runtime's Segmenter on ONNX Runtime
    CPU, as the export's gate ran that row."""
    from edgeseg.export.gate_rows import gate_logits
    from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner
    from edgeseg.runtime.segmenter import Segmenter

    inputs, outputs = network_tensors(manifest.spec, len(manifest.labels))
    runner = OnnxRuntimeRunner(folder / entry.file, entry, inputs, outputs, manifest.max_batch)
    with Segmenter(manifest.spec, manifest.labels, runner) as segmenter:
        return gate_logits(segmenter.logits, images, manifest.max_batch, f"gate: {REFERENCE} reference", progress)


def onnx_reference(folder: Path, manifest: Manifest, parity: dict, verify_data: str | None, intensity: str | None,
                   why: str, progress: bool, echo: Callable[[str], None]) -> tuple[VerifySet, np.ndarray, dict]:
    """(held-out slices, reference logits, the run's record) of a gate against the FP32 ONNX graph."""
    entry, link = reference_link(manifest, parity)
    verify_set = held_out_without_torch(manifest, parity, verify_data, intensity)
    echo(f"reference: {entry.file} on ONNX Runtime CPU ({why}), which the export's gate passed against "
         f"{link['against']} (max |d| {float(link['max_abs']):.2g}, {link['changed_decided_pixels']} decided pixels "
         f"changed on {link['slices']} slices of {link['data']})")
    reference = reference_logits(folder, manifest, entry, verify_set.images, progress)
    return verify_set, reference, {"reference": REFERENCE, "reference_link": link}
