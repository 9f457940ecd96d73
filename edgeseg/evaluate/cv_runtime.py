"""Runtime and INT8 columns of k-fold cross-validation: each fold's exported bundle
(:mod:`edgeseg.export.fold_export`) scored through the runtime on the fold's held-out slices.

``score_fold_bundle`` runs every (runner, precision) pair the export gate accepted on the fold's
held-out slices, with the per-slice Dice of the PyTorch column
(:mod:`edgeseg.evaluate.cross_validation`), and keeps the scores in ``runtime_scores.json``
beside the fold's export record, read back, not redone, on the next run. With the fold's
cross-fitted component filters (``postprocess``) it scores the same backends again with them,
kept in ``runtime_scores_crossfit.json`` with the filters they were scored under.
``summarise_runtime`` and ``format_runtime`` make cv.json's and cv.txt's runtime part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_write_text
from edgeseg.evaluate.cross_validation import (NO_FILTERS, fold_record, held_out_volumes, score_volumes,
                                               summarise_folds, tta_suffix)

log = logging.getLogger("edgeseg.cv")

RUNTIME_SCORES = "runtime_scores.json"
RUNTIME_SCORES_CROSSFIT = "runtime_scores_crossfit.json"


def score_fold_bundle(checkpoint: str | Path, folder: Path, record: dict[str, Any], threads: int = 0,
                      progress: bool = False, echo: Callable[[str], None] = log.info,
                      postprocess: dict | None = None, tta: str = "none") -> dict[str, dict[str, Any]]:
    """Per-slice Dice on the fold's held-out slices of every backend the gate accepted in the
    fold's bundle ({"onnxruntime:int8": fold scores, ...}); kept in ``folder/runtime_scores.json``
    and read from there when present. With ``postprocess`` (cross-fitted filters) the
    Segmenter applies it, and the scores are kept in ``runtime_scores_crossfit.json``, read
    back only when they were scored under the same filters. Under test-time mirroring ``tta``
    the files are ``runtime_scores[_crossfit]-tta-MODE.json``."""
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.runtime.manifest import read_manifest, verify_artifacts
    from edgeseg.runtime.selection import select_runner
    from edgeseg.runtime.segmenter import Segmenter

    name = RUNTIME_SCORES if postprocess is None else RUNTIME_SCORES_CROSSFIT
    scores_path = folder / name.replace(".json", tta_suffix(tta) + ".json")
    if scores_path.is_file():
        kept = json.loads(scores_path.read_text(encoding="utf-8"))
        if postprocess is None:
            return kept
        if kept.get("postprocess") == postprocess:
            return kept["scores"]
    payload = read_checkpoint(checkpoint)
    volumes = held_out_volumes(checkpoint, payload)
    bundle = folder / record["bundle"]
    manifest = read_manifest(bundle)
    verify_artifacts(bundle, manifest)
    accepted = [row["backend"] for row in record["gate"] if row["passed"]]
    scores = {}
    for backend in accepted:
        echo(f"scoring {backend} on {len(volumes)} held-out case(s)")
        runner = select_runner(bundle, manifest, backend, threads)
        # The same post-processing as the PyTorch column, not the manifest's (chosen on these slices).
        options = NO_FILTERS if postprocess is None else postprocess
        with Segmenter(manifest.spec, manifest.labels, runner, options, manifest.max_batch, tta=tta,
                       regions=manifest.regions) as segmenter:
            scores[backend] = fold_record(checkpoint, payload, score_volumes(segmenter, volumes, payload, progress))
    kept = scores if postprocess is None else {"postprocess": postprocess, "scores": scores}
    atomic_write_text(scores_path, json.dumps(kept, indent=2) + "\n")
    return scores


def summarise_runtime(fp32_folds: list[dict], records: list[dict], runtime: list[dict[str, dict]]) -> dict[str, Any]:
    """The runtime and INT8 part of cv.json: per backend, its fold summary over the folds where
    the gate accepted it, and its Dice drop against the PyTorch FP32 column per fold and metric
    (PyTorch minus backend; mean and sample std over those folds); per fold, the gate's verdicts.
    A backend refused on a fold is missing from that fold's figures and listed in ``refused``."""
    import numpy as np

    metrics = ["binary", *fp32_folds[0]["classes"][1:]]
    fp32_means = [{m: float(np.mean([s[m] for s in fold["slices"]])) for m in metrics} for fold in fp32_folds]
    backends = sorted({row["backend"] for record in records for row in record["gate"]},
                      key=lambda b: (b.split(":")[1] != "fp32", b))
    out: dict[str, Any] = {}
    for backend in backends:
        folds = [(k, scores[backend]) for k, scores in enumerate(runtime) if backend in scores]
        refused = [{"fold": fp32_folds[k]["fold"], **row} for k, record in enumerate(records)
                   for row in record["gate"] if row["backend"] == backend and not row["passed"]]
        entry: dict[str, Any] = {"folds": [fp32_folds[k]["fold"] for k, _ in folds], "refused": refused}
        if folds:
            summary = summarise_folds([fold for _, fold in folds])
            drops = [{m: fp32_means[k][m] - row[m] for m in metrics} for (k, _), row in zip(folds, summary["per_fold"])]
            entry.update(summary)
            entry["dice_drop"] = {
                "per_fold": [{"fold": fp32_folds[k]["fold"], **d} for (k, _), d in zip(folds, drops)],
                "mean": {m: float(np.mean([d[m] for d in drops])) for m in metrics},
                "std": {m: float(np.std([d[m] for d in drops], ddof=1)) if len(drops) > 1 else 0.0 for m in metrics}}
        out[backend] = entry
    gate = [{"fold": fold["fold"], "bundle": record["bundle"], "calibration_cases": (record.get("calibration") or {}).get("case_ids"),
             "rows": record["gate"]} for fold, record in zip(fp32_folds, records)]
    return {"settings": records[0]["settings"], "backends": out, "gate": gate}


def format_runtime(summary: dict[str, Any], metrics: list[str], folds: int, gate: bool = True,
                   title: str = "runtime (bundle) on the held-out slices") -> str:
    """cv.txt's runtime part: per backend mean +- std over the folds it was accepted on and its
    drop against PyTorch FP32; then, with ``gate``, each fold's INT8 gate verdicts with every
    class's drop."""
    lines = ["", f"{title}: mean+-sample std over folds; drop = PyTorch FP32 minus backend"]
    for backend, entry in summary["backends"].items():
        if not entry["folds"]:
            lines.append(f"{backend:<18} refused by the gate on every fold")
            continue
        figures = "  ".join(f"{m} {entry['mean'][m]:.4f}+-{entry['std'][m]:.4f}" for m in metrics)
        drops = "  ".join(f"{m} {entry['dice_drop']['mean'][m]:+.4f}+-{entry['dice_drop']['std'][m]:.4f}" for m in metrics)
        lines.append(f"{backend:<18} {len(entry['folds'])}/{folds} folds  {figures}")
        lines.append(f"{'':<18} drop  {drops}")
        if entry["refused"]:
            lines.append(f"{'':<18} refused on fold(s) {', '.join(str(r['fold']) for r in entry['refused'])}")
    if not gate:
        return "\n".join(lines)
    lines.append("")
    drop_is = ("FP32's Dice against the labels minus INT8's" if summary["settings"].get("gate_metric") == "truth"
               else "1 - Dice against the FP32 model's mask")
    lines.append(f"INT8 parity gate per fold (drop = {drop_is}, per class; limit "
                 f"{summary['settings']['max_dice_drop_int8']:g})")
    for fold in summary["gate"]:
        for row in fold["rows"]:
            if not row["backend"].endswith(":int8"):
                continue
            verdict = "accepted" if row["passed"] else "REFUSED"
            classes = ", ".join(f"{name} {'-' if d is None else f'{d:.4f}'}" for name, d in row["class_drop"].items())
            line = f"fold {fold['fold']}  {row['backend']:<18} {verdict:<8} worst {row['worst_class']} {row['dice_drop']:.4f}  ({classes})"
            if row.get("gate_metric") == "truth" and row.get("agreement"):  # how far the masks moved, for the record
                line += "  agreement with FP32: " + ", ".join(
                    f"{name} {'-' if a is None else f'{a:.4f}'}" for name, a in row["agreement"].items())
            lines.append(line)
    return "\n".join(lines)
