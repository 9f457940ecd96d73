"""``edgeseg gate``: score an exported bundle on the runners its export gate never ran.

The export gate scores each artifact on every runner installed where the bundle is exported, and
``auto`` runs an artifact only on a runner the gate scored and passed (the manifest's ``scored``
and ``excluded``). A runner installed later, where the bundle is deployed (OpenVINO, ONNX
Runtime's GPU providers), has no verdict; this scores it, on this machine, with the gate's own
code (:mod:`edgeseg.export.gate_rows`) and the settings the bundle's ``parity.json`` records
(thresholds, drop metric, structure size, held-out slice count and data), against the PyTorch
model of the checkpoint the bundle was exported from (its sha256 must be the manifest's), or,
where torch or the checkpoint is not there, against the bundle's FP32 ONNX graph on ONNX Runtime
CPU, which the export's gate passed against that model (:mod:`edgeseg.export.onnx_reference`;
such rows and their run name the reference, ``onnxruntime-fp32-cpu``). The new
rows are added to ``parity.json`` and the verdicts to the manifest (``scored``, ``excluded``);
nothing else in either changes. A manifest that records no ``scored`` (exported before the gate
recorded it) gets it from its parity rows first: that is the one migration of the field.

``manifest.json`` changes, so the bundle's identity (its sha256, which outputs' provenance, the
probe cache and the audit logs record) changes with it; ``parity.json``'s ``rescored`` says what
was added, when, on which machine and data. The bundle folder is locked while this runs, and the
manifest is written last and only if it is still the one read. Ctrl-C and SIGTERM are held back
between the two writes; a process killed outright between them leaves rows the manifest does not
list, which ``inspect`` names and the next run replaces.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_write_text, check_output_folder
from edgeseg.errors import BackendError, DataError, EdgesegError, require
from edgeseg.export.audit import row_runners
from edgeseg.export.verify import GATE_VERSION, failures, gate_label, parity_table
from edgeseg.runtime.manifest import (MANIFEST_NAME, PARITY_NAME, Manifest, read_bundle_json_bytes, read_manifest,
                                      sha256_file, verify_artifacts)
from edgeseg.stopping import stops_held


def rescore_bundle(bundle: str | Path, checkpoint: str | Path | None, verify_data: str | None = None,
                   intensity: str | None = None, backends: Sequence[str] = (), progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Score ``bundle``'s artifacts on each installed runner without a gate verdict (only those
    named in ``backends``, ``NAME`` or ``NAME:PRECISION``, when given) and record the verdicts.
    The reference is the checkpoint's PyTorch model where torch is installed and ``checkpoint``
    given, else the bundle's FP32 ONNX graph on ONNX Runtime CPU (:mod:`edgeseg.export.onnx_reference`).
    Returns the new rows, the manifest's sha256 before and after (equal when nothing was written)."""
    folder = Path(bundle)
    manifest = read_manifest(folder)
    verify_artifacts(folder, manifest)
    parity = _parity(folder)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise DataError(f"checkpoint {checkpoint} is not a file")
        exported_from, digest = str(manifest.source.get("sha256") or ""), sha256_file(checkpoint)
        if digest != exported_from:
            raise DataError(f"checkpoint {checkpoint} is not the one {folder} was exported from (sha256 "
                            f"{digest[:12]}..., the manifest's source has {exported_from[:12] or 'none'}...)")
    check_output_folder(folder, "the bundle")
    todo = _unscored(manifest, parity, backends)
    migrated = any(entry.scored is None for entry in manifest.artifacts)
    if not todo and not migrated:
        echo(f"nothing to score: every runner installed here has the gate's verdict on every artifact of {folder}")
        return {"rows": [], "before": manifest.sha256, "after": manifest.sha256}
    with _locked(folder):
        rows, run = _score(folder, manifest, parity, checkpoint, todo, verify_data, intensity, progress, echo)
        return _record(folder, manifest, parity, rows, run, echo)


def _parity(folder: Path) -> dict:
    """The bundle's parity report, refused unless it is a passed report of today's gate."""
    path = folder / PARITY_NAME
    try:
        parity = json.loads(read_bundle_json_bytes(path).decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable parity report ({' '.join(str(exc).split())})") from None
    if not isinstance(parity, dict) or not isinstance(parity.get("results"), list) or parity.get("passed") is not True:
        raise DataError(f"{path} is not a passed parity report; export the bundle again")
    if parity.get("gate_version") != GATE_VERSION:
        label = gate_label(parity.get("gate_version"), parity.get("structure_px"))
        raise DataError(f"{folder} passed parity gate {label}, not today's v{GATE_VERSION}: its rows and new ones "
                        "would be judged differently; export the bundle again")
    return parity


def _unscored(manifest: Manifest, parity: dict, backends: Sequence[str]) -> list[tuple[Any, Any]]:
    """(artifact entry, runner class) of every installed runner with no verdict on the artifact:
    not in its ``scored`` (from the rows for a manifest without one), not excluded."""
    from edgeseg.runtime.runners import plugin_errors, runner_class, runners, runners_for
    from edgeseg.runtime.runners.remote import is_remote
    from edgeseg.runtime.selection import canonical_backend, parse_backend

    named = sorted(name for name, cls in runners(warn=False).items() if cls.format is not None)
    takes = f"--backend NAME or NAME:PRECISION, NAME one of {', '.join(named)}"
    for text in backends:  # parse_backend's "known" list offers auto and a server, which predict takes
        name = canonical_backend(text).partition(":")[0]
        if name == "all":  # edgeseg bench's word for every runner
            raise BackendError(f"edgeseg gate takes no --backend all: omit --backend to score every installed runner, "
                               f"or give {takes}")
        if name == "auto" or is_remote(text.strip()):
            raise BackendError(f"edgeseg gate scores runners by name, not {text.strip()!r}: {takes}")
        if name not in named and name not in plugin_errors():
            raise BackendError(f"unknown backend {name!r}; edgeseg gate takes {takes}")
    wanted = [parse_backend(text) for text in backends]
    for name, _ in wanted:
        if not runner_class(name).available():
            raise BackendError(f"backend {name} is not installed here ({runner_class(name).install_hint()})")
    for name, precision in wanted:  # else "nothing to score" would claim a verdict it never had
        if not any(cls.name == name and precision in (None, e.precision)
                   for e in manifest.artifacts for cls in runners_for(e.format, e.precision)):
            raise BackendError(f"no artifact of the bundle runs on {name}{':' + precision if precision else ''}; it has "
                               f"{', '.join(e.file for e in manifest.artifacts)}")
    todo = []
    for entry in manifest.artifacts:
        scored = _exported_runners(parity, entry.file) if entry.scored is None else entry.scored
        todo += [(entry, cls) for cls in runners_for(entry.format, entry.precision)
                 if cls.available() and cls.name not in scored and cls.name not in entry.excluded
                 and (not wanted or any(cls.name == n and p in (None, entry.precision) for n, p in wanted))]
    return todo


def _exported_runners(parity: dict, file: str) -> list[str]:
    """The runners the export's own gate ran on ``file``: a manifest without ``scored`` has never
    been through this command, so a row it added (``rescored``) is a killed run's leftover, with
    no verdict in the manifest, and is scored again."""
    return row_runners([r for r in parity["results"] if "rescored" not in r], file)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the bundle folder locked (flock on the folder itself: nothing is added to the bundle)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"another edgeseg gate is scoring {folder}; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _torch_here() -> bool:
    """True where torch can be imported (looked up, not imported: that takes a second or more)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _score(folder: Path, manifest: Manifest, parity: dict, checkpoint: Path | None, todo: list,
           verify_data: str | None, intensity: str | None, progress: bool,
           echo: Callable[[str], None]) -> tuple[list[dict], dict]:
    """The parity rows of ``todo``, judged as the export's gate judged the bundle, and what they
    were judged on (reference, data, cases, slices)."""
    if not todo:
        return [], {}
    from edgeseg.export.gate_rows import GateJudge, runner_row
    from edgeseg.export.onnx_reference import REFERENCE, onnx_reference
    from edgeseg.runtime.postprocess_options import PostprocessOptions

    if checkpoint is not None and _torch_here():
        verify_set, reference, run = _torch_reference(manifest, parity, checkpoint, verify_data, intensity,
                                                      progress, echo)
    else:
        why = "without --checkpoint" if checkpoint is None else "torch is not installed here"
        verify_set, reference, run = onnx_reference(folder, manifest, parity, verify_data, intensity, why,
                                                    progress, echo)
    slice_ids = [[c, int(n)] for c, n in zip(verify_set.slice_cases, verify_set.case_slices)]
    recorded = (parity.get("held_out") or {}).get("slice_ids")
    if (verify_set.source, verify_set.cases, slice_ids) != (parity.get("data"), parity.get("cases"), recorded):
        echo(f"held-out slices: {len(slice_ids)} of {verify_set.source} ({len(verify_set.cases)} cases), not the "
             f"export's {'unrecorded ones' if recorded is None else len(recorded)} of {parity.get('data')} "
             f"({len(parity.get('cases') or [])} cases): the verdicts are on other slices than the export's")
    labels, batch = manifest.labels, manifest.max_batch
    post = PostprocessOptions.from_dict(manifest.postprocess, manifest.num_classes)
    judge = GateJudge(manifest.spec, labels, batch, verify_set, reference,
                      {k: float(v) for k, v in parity["thresholds"].items()}, parity.get("gate_metric", "agreement"),
                      {"rules": post.slice_rules(manifest.spec.size, manifest.spec.size),
                       "structure_px": int(parity["structure_px"]),
                       "volume_filtered": {c for c, o in post.classes.items() if o.filters_volume}}, progress)
    rows = []
    for entry, cls in todo:
        try:
            row = runner_row(judge, folder, entry, cls)
            # a row not against parity.json's own reference names its reference
            rows.append({**row, "reference": REFERENCE} if run["reference"] == REFERENCE else row)
        except EdgesegError as exc:
            rows.append({"file": entry.file, "runner": cls.name, "load_error": f"does not load: {exc}"})
    return rows, {**run, "data": verify_set.source, "cases": verify_set.cases,
                  "slices": int(len(verify_set.images)), "slice_ids": slice_ids}


def _torch_reference(manifest: Manifest, parity: dict, checkpoint: Path, verify_data: str | None,
                     intensity: str | None, progress: bool, echo: Callable[[str], None]) -> tuple[Any, Any, dict]:
    """(held-out slices, reference logits, the run's record) of a gate against the checkpoint's
    PyTorch model, as the export's gate ran it."""
    require("torch", "train", "edgeseg gate")
    from edgeseg.export.gate_rows import gate_logits
    from edgeseg.export.onnx_reference import recorded_held_out
    from edgeseg.export.verify import load_verify_set
    from edgeseg.models.checkpoint import load_model
    from edgeseg.runtime.segmenter import Segmenter

    model, payload = load_model(checkpoint)
    if parity.get("held_out") and not verify_data:  # the export's own slices, read as its gate read them
        verify_set = recorded_held_out(payload, manifest, parity, intensity,
                                       "give --verify-data DATA to draw slices afresh, or export again")
    else:
        # The export's held-out data, where it was not the checkpoint's validation cases.
        trained_on = (payload.get("train_config") or {}).get("data")
        data = verify_data or (None if parity.get("data") == trained_on else parity.get("data"))
        verify_set = load_verify_set(payload, manifest.spec, data, int(parity["slices"]), intensity)
    with Segmenter.from_module(model, manifest.spec, manifest.labels, max_batch=manifest.max_batch) as segmenter:
        reference = gate_logits(segmenter.logits, verify_set.images, manifest.max_batch, "gate: fp32 reference",
                                progress)
    return verify_set, reference, {"reference": "pytorch-fp32-eager-cpu", "checkpoint_sha256": manifest.source.get("sha256")}


def _record(folder: Path, manifest: Manifest, parity: dict, rows: list[dict], run: dict,
            echo: Callable[[str], None]) -> dict:
    """Add ``rows`` to parity.json and their verdicts (and, for a manifest without it, ``scored``)
    to manifest.json, the manifest last and only if it is still the one read."""
    from edgeseg.report.output import to_json_compatible
    from edgeseg.report.provenance import environment

    scored_rows = [r for r in rows if "load_error" not in r]
    if scored_rows:
        number = len(parity.get("rescored") or [])
        for row in scored_rows:
            row["rescored"] = number
        done = {(r["file"], r["runner"]) for r in scored_rows}  # rows of a run stopped before its manifest
        parity["results"] = [r for r in parity["results"] if (r.get("file"), r.get("runner")) not in done] + scored_rows
        parity["rescored"] = [*(parity.get("rescored") or []), {
            "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **run,
            "runners": {f: row_runners(scored_rows, f) for f in dict.fromkeys(r["file"] for r in scored_rows)},
            "manifest_sha256_before": manifest.sha256, "environment": environment()}]
    raw = json.loads(read_bundle_json_bytes(folder / MANIFEST_NAME).decode("utf-8-sig"))
    for item in raw["artifacts"]:
        entry = next(e for e in manifest.artifacts if e.file == item["file"])
        scored = list(_exported_runners(parity, entry.file) if entry.scored is None else entry.scored)
        excluded = dict(entry.excluded)
        for row in (r for r in rows if r["file"] == entry.file):
            if "load_error" in row:
                excluded[row["runner"]] = row["load_error"]
                continue
            scored += [row["runner"]] if row["runner"] not in scored else []
            if not row["passed"]:
                excluded[row["runner"]] = failures({"results": [row]})[0].split(": ", 1)[1]
        item["scored"] = scored
        if excluded:
            item["excluded"] = excluded
            parity.setdefault("excluded", {})[entry.file] = excluded
    text = json.dumps(raw, indent=2, sort_keys=False) + "\n"
    Manifest.from_dict(json.loads(text))  # what is written must read back
    if hashlib.sha256(read_bundle_json_bytes(folder / MANIFEST_NAME)).hexdigest() != manifest.sha256:
        raise DataError(f"{folder / MANIFEST_NAME} changed while the gate ran (exported again?); nothing written")
    with stops_held():  # a Ctrl-C after the parity rows would leave rows the manifest does not list
        if scored_rows:
            atomic_write_text(folder / PARITY_NAME, json.dumps(to_json_compatible(parity), indent=2) + "\n")
        atomic_write_text(folder / MANIFEST_NAME, text)
    after = hashlib.sha256(text.encode()).hexdigest()
    if scored_rows:
        echo(parity_table({"results": scored_rows}))
    for row in rows:
        verdict = ("passed: auto may pick it" if row.get("passed") else
                   f"excluded from auto ({row.get('load_error') or failures({'results': [row]})[0].split(': ', 1)[1]})")
        echo(f"{row['file']} on {row['runner']}: {verdict}")
    echo(f"{folder}: manifest.json{' and parity.json' if scored_rows else ''} updated; the bundle's manifest "
         f"sha256 is now {after[:12]} (was {manifest.sha256[:12]})")
    return {"rows": rows, "before": manifest.sha256, "after": after}
