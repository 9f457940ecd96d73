"""The gate's reference where PyTorch or the checkpoint is not there: the bundle's own FP32 ONNX
graph on ONNX Runtime's CPU provider (``onnxruntime-fp32-cpu``).

A deployment machine with the torch-free runtime has the bundle but neither torch nor, often, the
checkpoint. The export's gate already compared the FP32 graph on ONNX Runtime CPU with the FP32
PyTorch model on the held-out slices, and passed it as identical (masks equal wherever the two
best logits are 1e-4 or more apart; logits typically within 1e-5): that row of ``parity.json``,
for the very bytes the manifest lists (its sha256), is the link of the chain
PyTorch -> ``model.onnx`` on ONNX Runtime -> the runner scored here, and is copied into the
record. Without it (no FP32 graph, a row of other bytes, a failed or missing row) there is no
chain and the gate is refused.

The held-out slices are the export's own where ``parity.json`` names data readable here (a
phantom, or a path that exists): its ``held_out`` record (:func:`held_out_record`) says how the
export read them (the checkpoint's label mapping, the run's intensity, case pattern and mask
kind) and which slices its gate took (case and slice number), and the slices read here must be
those, with the same labels (their sha256), or the gate is refused. ``--verify-data`` draws
slices afresh from other data, read with the recorded mapping. A bundle exported before the
record (no ``held_out``) has neither the mapping nor the slices: the gate reads labels as class
``i`` = value ``i``, and refuses where that can be wrong unseen: with the "truth" gate metric
(its verdict is Dice against those labels, and a permuted mapping would look plausible) and
where a label value is not a class index 0..N-1 (0/255 masks, say).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import hashlib

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


def held_out_record(verify_set: VerifySet) -> dict[str, Any]:
    """What a gate without the checkpoint needs to read the export's held-out slices as its gate
    did (parity.json's ``held_out``): how the data was read (``read_as``: label mapping, intensity,
    slice-folder options), which slices were taken (``slice_ids``: [case, slice number] pairs) and
    the sha256 of their labels at model resolution (None when unlabelled)."""
    return {"read_as": verify_set.read_as,
            "slice_ids": [[c, int(n)] for c, n in zip(verify_set.slice_cases, verify_set.case_slices)],
            "truth_sha256": truth_digest(verify_set.truth)}


def truth_digest(truth: np.ndarray | None) -> str | None:
    """sha256 of held-out labels (class indices at model resolution), with their shape."""
    if truth is None:
        return None
    labels = np.ascontiguousarray(truth, dtype=np.uint8)
    return hashlib.sha256(repr(labels.shape).encode() + labels.tobytes()).hexdigest()


def held_out_without_torch(manifest: Manifest, parity: dict, verify_data: str | None, intensity: str | None,
                           echo: Callable[[str], None] = print) -> VerifySet:
    """The held-out slices without the checkpoint: the export's recorded slices of its data where
    they are readable here, else ``verify_data`` (read with the recorded label mapping); DataError
    naming ``--verify-data`` where neither is, and where they cannot be read as the export read them."""
    from edgeseg.data.open import parse_phantom_spec

    names = [manifest.labels[c] for c in sorted(manifest.labels)]
    record = parity.get("held_out")
    if record is None:
        _check_unrecorded(manifest, parity, verify_data, intensity, len(names))
        echo("parity.json records no held-out slices or label mapping (exported before edgeseg recorded them): "
             "labels read as class i = value i, and the slices drawn again, perhaps not the export's")
    read_as = (record or {}).get("read_as") or {}
    payload: dict[str, Any] = {"class_names": names, "label_values": read_as.get("label_values")}
    recorded, cases = parity.get("data"), list(parity.get("cases") or [])
    if verify_data is not None:
        return load_verify_set(payload, manifest.spec, verify_data, int(parity["slices"]), intensity)
    here = isinstance(recorded, str) and (parse_phantom_spec(recorded) is not None or Path(recorded).exists())
    if not here or not cases:
        raise DataError(f"edgeseg gate without torch or --checkpoint needs --verify-data DATA: the export's "
                        f"held-out data {recorded} is not found here")
    if record:
        return recorded_held_out(payload, manifest, parity, intensity,
                                 "run edgeseg gate where torch is installed, with --checkpoint")
    payload.update(train_config={"data": recorded, "intensity": manifest.source.get("intensity")}, split={"val": cases})
    return load_verify_set(payload, manifest.spec, None, int(parity["slices"]), intensity)


def recorded_held_out(payload: dict, manifest: Manifest, parity: dict, intensity: str | None, fix: str) -> VerifySet:
    """The export's held-out slices read exactly as its gate read them: parity.json's data and
    cases, its ``held_out`` record's ``read_as`` and ``slice_ids``, the labels of ``payload``
    (the checkpoint's, or the recorded mapping). DataError where ``intensity`` is not the recorded
    one, and where the labels read are not the ones the export's gate saw (``truth_sha256``)."""
    record, recorded = parity["held_out"], parity.get("data")
    read_as, slice_ids = record.get("read_as") or {}, record.get("slice_ids")
    if intensity is not None and intensity != read_as.get("intensity"):
        raise DataError(f"--intensity {intensity} is not the intensity the export read its held-out slices of "
                        f"{recorded} with ({read_as.get('intensity') or 'the data default'}); give --verify-data DATA "
                        f"with it to draw slices afresh")
    train_config = {"data": recorded, "intensity": read_as.get("intensity"),
                    **{k: read_as.get(k) for k in ("case_pattern", "mask")}}
    payload = {**payload, "train_config": train_config, "split": {"val": list(parity.get("cases") or [])}}
    verify_set = load_verify_set(payload, manifest.spec, None, int(parity["slices"]), None, slice_ids)
    if truth_digest(verify_set.truth) != record.get("truth_sha256"):
        raise DataError(f"the labels of the export's {len(slice_ids)} held-out slices of {recorded} read here are not "
                        f"the ones its gate saw (sha256 {str(truth_digest(verify_set.truth))[:12]}..., parity.json "
                        f"has {str(record.get('truth_sha256'))[:12]}...); {fix}")
    return verify_set


def _check_unrecorded(manifest: Manifest, parity: dict, verify_data: str | None, intensity: str | None,
                      classes: int) -> None:
    """Refuse a bundle without the ``held_out`` record where reading labels as class indices can
    be silently wrong: the truth gate metric, or a label value outside 0..``classes``-1."""
    from edgeseg.data.case_stream import CaseVolumes, open_case_readers
    from edgeseg.data.open import parse_phantom_spec

    fix = "run edgeseg gate where torch is installed, with --checkpoint, or export the bundle again"
    if parity.get("gate_metric") == "truth":
        raise DataError(f"parity.json records no label mapping (exported before edgeseg recorded it), and the "
                        f"truth gate metric judges against the labels; {fix}")
    data = verify_data or parity.get("data")
    if verify_data is None and not (isinstance(data, str) and (parse_phantom_spec(data) or Path(data).exists())):
        return  # not readable here: held_out_without_torch says so
    wanted = set(parity.get("cases") or []) if verify_data is None else None
    read_as = intensity or (None if verify_data else manifest.source.get("intensity"))
    for vol in CaseVolumes(open_case_readers(data, intensity=read_as), lambda c: wanted is None or c in wanted):
        stray = [] if vol.label is None else sorted(set(np.unique(vol.label).tolist()) - set(range(classes)))
        if stray:
            raise DataError(f"parity.json records no label mapping (exported before edgeseg recorded it), and case "
                            f"{vol.case_id} of {data} has label value {stray[-1]}, not a class index 0..{classes - 1}; "
                            f"{fix}")


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
    verify_set = held_out_without_torch(manifest, parity, verify_data, intensity, echo)
    echo(f"reference: {entry.file} on ONNX Runtime CPU ({why}), which the export's gate passed against "
         f"{link['against']} (max |d| {float(link['max_abs']):.2g}, {link['changed_decided_pixels']} decided pixels "
         f"changed on {link['slices']} slices of {link['data']})")
    reference = reference_logits(folder, manifest, entry, verify_set.images, progress)
    return verify_set, reference, {"reference": REFERENCE, "reference_link": link}
