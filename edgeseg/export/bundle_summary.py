"""What a bundle holds and which of its checks fail, as plain data, for ``edgeseg inspect BUNDLE``
(its text and its ``--json`` are both made from this one record)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeseg.errors import BundleError
from edgeseg.runtime.manifest import PARITY_NAME, read_bundle_json_bytes, read_manifest, verify_artifacts
from edgeseg.runtime.parity_record import with_parity_record


def summarize_bundle(bundle: str | Path) -> dict[str, Any]:
    """The manifest (source and provenance, model, spec and its hash, labels, post-processing,
    tensors), each artifact with a fresh size and sha256 check, the runners the gate scored on it
    and those ``auto`` skips for it on this machine, the calibration record, the parity report with its gate, the notes, and
    the checks that failed (``failed``, empty when none): besides the hashes, that parity.json is
    this bundle's and its verdicts follow from its numbers (:mod:`edgeseg.export.audit`), and that
    the manifest's spec and labels are those the artifacts embed (:mod:`edgeseg.export.embedded`).
    BundleError for a folder that is not a readable bundle or a parity.json that is not JSON."""
    from edgeseg.export.audit import parity_checks
    from edgeseg.export.embedded import embedded_checks
    from edgeseg.export.verify import gate_label

    manifest = read_manifest(bundle)
    failed: list[dict[str, Any]] = []
    if not manifest.artifacts:
        failed.append(_failure("no-artifacts", "the manifest lists no artifacts"))
    artifacts = []
    recorded = with_parity_record(bundle, manifest)  # what auto reads for a manifest without scored
    for entry, gated in zip(manifest.artifacts, recorded.artifacts):
        row = _artifact(bundle, manifest, entry, gated)
        if row["hash_problem"] is not None:
            failed.append(_failure("hash", f"{entry.key}: {row['hash_problem']}", entry.key))
        artifacts.append(row)
    notes: list[str] = []
    report = _read_parity(bundle)
    unrecorded = [entry.file for entry in manifest.artifacts if entry.scored is None]
    if unrecorded and recorded is not manifest:
        notes.append(f"the manifest records no runners the parity gate scored on {', '.join(unrecorded)} (exported "
                     f"before it did): auto takes them from {PARITY_NAME}'s rows, which name this bundle's artifacts "
                     "by file and sha256; edgeseg gate BUNDLE --checkpoint CKPT records them in the manifest")
    elif unrecorded:
        # edgeseg gate refuses a bundle of gate v1 (before 2026-12-04): only a new export records them there
        v1 = isinstance(report, dict) and gate_label(report.get("gate_version"), None) == "v1"
        remedy = ("export the bundle again to record them (it passed parity gate v1, which edgeseg gate does not "
                  "extend)" if v1 else "edgeseg gate BUNDLE --checkpoint CKPT records them and scores the others")
        notes.append(f"the manifest records no runners the parity gate scored on {', '.join(unrecorded)} (exported "
                     f"before it did, and {PARITY_NAME}'s rows do not name them by file and sha256): auto runs an "
                     f"INT8 graph there only on the runner every gate ran (onnxruntime for ONNX) and judges the "
                     f"others by excluded alone; {remedy}")
    parity = None
    if report is _MISSING:  # every export writes it: without it nothing says the artifacts were checked
        failed.append(_failure("parity-missing", f"{PARITY_NAME} is missing: nothing records that the artifacts "
                                                 "passed the parity gate"))
    elif report is None:
        failed.append(_failure("parity-empty", f"{PARITY_NAME} holds no parity results"))
    else:
        parity = {"gate": gate_label(report.get("gate_version"), report.get("structure_px")), "report": report}
        if report.get("passed") is False:
            failed.append(_failure("parity-gate", "the parity report records a failed gate"))
        audit_notes, problems = parity_checks(report, manifest)
        notes += audit_notes
        failed += [_failure("parity-audit", problem) for problem in problems]
    embedded_notes, problems = embedded_checks(bundle, manifest)
    notes += embedded_notes
    failed += [_failure("embedded", problem) for problem in problems]
    return {"path": str(bundle), "bundle_schema": manifest.schema, "edgeseg_version": manifest.edgeseg_version,
            "created": manifest.created, "source": manifest.source, "model": manifest.model,
            "spec": manifest.spec.to_dict(), "spec_hash": manifest.spec.hash,
            "labels": {str(k): v for k, v in sorted(manifest.labels.items())}, "postprocess": manifest.postprocess,
            "max_batch": manifest.max_batch, "resize_input": manifest.resize_input,
            "training_fov": None if manifest.training_fov is None else manifest.training_fov.to_dict(),
            "inputs": [t.to_dict() for t in manifest.inputs], "outputs": [t.to_dict() for t in manifest.outputs],
            "artifacts": artifacts, "calibration": manifest.calibration, "parity": parity, "notes": notes,
            "passed": not failed, "failed": failed}


def _artifact(bundle: str | Path, manifest, entry, gated) -> dict[str, Any]:
    """One artifact of the manifest, its hash check, and the runners ``auto`` skips for it: those
    the gate excluded, those that run only when named, and those this machine cannot run it on
    (judged on ``gated``: the entry with the runners parity.json records, where the manifest has none)."""
    from edgeseg.runtime.runners import runners_for
    from edgeseg.runtime.selection import skip_reasons, unscored_reason

    try:
        verify_artifacts(bundle, manifest, only=[entry])
        problem = None
    except BundleError as exc:
        problem = str(exc).split(": ", 1)[-1]
    skips = dict(entry.excluded)
    for cls in runners_for(entry.format, entry.precision):
        if cls.name not in skips and cls.named_only:
            skips[cls.name] = cls.named_only
        elif cls.name not in skips and unscored_reason(gated, cls.name):  # the bundle's, not this machine's
            skips[cls.name] = unscored_reason(gated, cls.name)
        elif cls.name not in skips and skip_reasons(gated, cls.name):
            skips[cls.name] = f"on this machine: {skip_reasons(gated, cls.name)}"
    return {"key": entry.key, "file": entry.file, "format": entry.format, "precision": entry.precision,
            "bytes": entry.bytes, "sha256": entry.sha256, "fingerprint": entry.fingerprint,
            "hash_check": "ok" if problem is None else "failed", "hash_problem": problem,
            "scored": None if entry.scored is None else list(entry.scored), "excluded": dict(entry.excluded),
            "auto_skips": dict(sorted(skips.items()))}


_MISSING = object()


def _read_parity(bundle: str | Path) -> Any:
    """The bundle's parity report (a dict with ``results``), None for one without results, or
    ``_MISSING`` without the file; BundleError for one that is not JSON or whose rows the parity
    table cannot show."""
    path = Path(bundle) / PARITY_NAME
    if not path.is_file():
        return _MISSING
    from edgeseg.export.verify import parity_table

    try:
        report = json.loads(read_bundle_json_bytes(path).decode("utf-8"))
        if not (isinstance(report, dict) and "results" in report):
            return None
        parity_table(report)  # rows of another shape than the gate writes: refused here, not in the text
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise BundleError(f"{path}: not a readable parity report ({' '.join(str(exc).split())})") from None
    return report


def _failure(check: str, message: str, artifact: str | None = None) -> dict[str, Any]:
    """One failed check: which (``hash``, ``parity-gate``, ...), the artifact it is about when it
    is one artifact's, and the phrase the error line gives."""
    return {"check": check, "artifact": artifact, "message": message}
