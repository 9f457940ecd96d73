"""One fold of a cross-validation run as a bundle: its ``last.pt`` through the normal export.

``export_fold`` runs :func:`edgeseg.export.pipeline.export_bundle` with FP32 ONNX and a
calibrated INT8 graph. The calibration data is the run's own training data, which the export
reads without the checkpoint's held-out cases (its ``val`` and ``test`` split: in a fold both are
the held-out group), and the gate runs on those held-out cases; so calibration never sees a slice
the fold is scored on (the manifest's ``calibration.case_ids`` says which cases it drew). When
the gate refuses INT8 on every runner no INT8 bundle exists: the refusal (each runner's
worst-class drop and every class's) is recorded, and an FP32-only bundle is exported for the
runtime FP32 column. The record, ``export.json`` in the fold's export folder, is read back, not
redone, on the next run; :mod:`edgeseg.evaluate.cv_runtime` scores the bundle.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError

log = logging.getLogger("edgeseg.export")

EXPORT_RECORD = "export.json"


def export_name(settings) -> str:
    """The name of a fold's export with ``settings``: what changes its outcome (calibration method
    and slices, INT8 limit, gate metric, INT8 scheme), so runs with other settings sit beside it.
    Folders from before the INT8 schemes hold the ``tensorrt`` scheme (the only one then) and keep
    their names."""
    limit = settings.max_dice_drop["int8"]
    metric = "" if settings.gate_metric == "agreement" else f"-{settings.gate_metric}"
    scheme = "" if settings.int8_activations == "tensorrt" else f"-{settings.int8_activations}"
    return f"int8-{settings.calib_method}-{settings.calib_slices}-max{limit:g}{metric}{scheme}"


def export_folder(fold_dir: str | Path, settings) -> Path:
    """The folder of one fold's export with ``settings`` (named by ``export_name``)."""
    return Path(fold_dir) / export_name(settings)


def export_fold(checkpoint: str | Path, folder: Path, settings, progress: bool = False,
                echo: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Export a fold's ``checkpoint`` into ``folder`` (FP32 ONNX + INT8 calibrated on the fold's
    training cases, through the parity gate on its held-out cases) and return the record written
    to ``folder/export.json``; an existing record is returned as it is when today's parity gate
    (version and ``structure_px``) made it, else the fold is exported again."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.verify import GATE_VERSION, ParityError
    from edgeseg.models.checkpoint import read_checkpoint

    record_path = folder / EXPORT_RECORD
    if export_is_current(folder, settings):
        return read_record(record_path)
    if record_path.is_file():  # made under an older gate: the record, its bundles and their scores go
        shutil.rmtree(folder)
    payload = read_checkpoint(checkpoint)
    data = (payload.get("train_config") or {}).get("data")
    if not data or not (payload.get("split") or {}).get("test"):
        raise DataError(f"{checkpoint} records no training data or held-out cases; train it with --folds")
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(calib=data, force=True, cache_dir=None, progress=progress, echo=echo)
    try:
        result = export_bundle(checkpoint, folder / "bundle", settings, **common)
        bundle, report, calibration = "bundle", result["parity"], result["manifest"].calibration
    except ParityError as exc:
        if exc.report is None or any(not r["passed"] for r in exc.report["results"] if r["precision"] != "int8"):
            raise  # only an INT8 refusal is a cross-validation result; anything else is an error
        echo(f"INT8 refused by the gate ({exc}); exporting FP32 ONNX alone for the runtime FP32 column")
        report, calibration = exc.report, exc.calibration
        fp32_only = replace(settings, int8=False, formats=("onnx",))
        export_bundle(checkpoint, folder / "bundle-fp32", fp32_only, **common)
        bundle = "bundle-fp32"
    record = {"checkpoint": str(checkpoint), "epoch": payload.get("epoch"), "split": payload.get("split"),
              "settings": {"calib_method": settings.calib_method, "calib_slices": settings.calib_slices,
                           "max_dice_drop_int8": settings.max_dice_drop["int8"], "gate_metric": settings.gate_metric,
                           "int8_scheme": settings.int8_activations, "verify_slices": settings.verify_slices, "max_batch": settings.max_batch},
              "calibration_data": str(data), "calibration": calibration, "bundle": bundle,
              "gate_version": GATE_VERSION, "structure_px": settings.structure_px, "gate": gate_rows(report)}
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    return record


def export_is_current(folder: Path, settings) -> bool:
    """Whether ``folder`` holds an export record made under today's parity gate for ``settings``."""
    from edgeseg.export.verify import GATE_VERSION, gate_label

    path = folder / EXPORT_RECORD
    if not path.is_file():
        return False
    return record_gate(read_record(path)) == gate_label(GATE_VERSION, settings.structure_px)


def read_record(path: Path) -> dict[str, Any]:
    """A fold's export record; an unreadable one is a DataError that says to remove it."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); remove it to export the fold again") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} is not an export record; remove it to export the fold again")
    return record


def record_gate(record: dict) -> str:
    """The parity gate a fold's export record was made under (``v1``: before gates had versions)."""
    from edgeseg.export.verify import gate_label

    return gate_label(record.get("gate_version"), record.get("structure_px"))


def gate_rows(report: dict) -> list[dict[str, Any]]:
    """The gate's verdict per (runner, precision): passed, worst-class drop and each class's
    drop (1 - agreement with the FP32 model's mask; None where a class was not judged)."""
    rows = []
    for r in report["results"]:
        if not r.get("runner"):  # the FP16 half-precision emulation, not a runtime backend
            continue
        drops = r.get("class_drop") or {name: None if a is None else 1.0 - a
                                        for name, a in (r.get("class_dice") or {}).items()}
        rows.append({"backend": f"{r['runner']}:{r['precision']}", "passed": bool(r["passed"]),
                     "dice_drop": r["dice_drop"], "worst_class": r.get("worst_class"), "class_drop": drops,
                     "limit": r["limit"], "gate_metric": r.get("gate_metric", "agreement"),
                     "agreement": r.get("class_dice"), "structure_changes": r.get("structure_changes", []),
                     "slices": report["slices"]})
    return rows
