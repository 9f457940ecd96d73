"""Run a sweep: per point train (resumable), export to INT8 through the gate, measure; then report.

Layout under the sweep folder ``OUT``::

    sweep.json        the checked sweep file and, per finished point, its result
    points/ID/run/    the training run (last.pt lets a killed training continue)
    points/ID/bundle/ the exported bundle (INT8 gate passed)
    points/ID/result.json   written last and atomically: a point with it is finished

A finished point is read, never retrained; a killed sweep restarts at the first unfinished one,
and a killed training continues from its last epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError
from edgeseg.sweep.config import Point, SweepConfig, train_config
from edgeseg.sweep.commands import point_commands

log = logging.getLogger("edgeseg.sweep")


def check_sweep_folder(sweep: SweepConfig, out: str | Path) -> Path:
    """The sweep folder, refused when it holds another sweep or other files (checked before any work)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"sweep output {out} exists and is not a folder")
    record = out / "sweep.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())["config"]
        except (json.JSONDecodeError, KeyError, OSError):
            raise DataError(f"{record} is unreadable; remove it or choose another --out") from None
        if saved != json.loads(json.dumps(sweep.to_dict())):
            raise DataError(f"{out} holds a different sweep; choose another --out to run this one")
    elif out.is_dir() and any(out.iterdir()):
        raise DataError(f"sweep output {out} exists and is not a sweep folder; choose another --out")
    return out


def run_sweep(sweep: SweepConfig, out: str | Path, progress: bool = False,
              after_point: Callable[[dict], None] | None = None) -> list[dict[str, Any]]:
    """Run every unfinished point of ``sweep`` under ``out``; returns all points' results in grid order."""
    out = check_sweep_folder(sweep, out)
    out.mkdir(parents=True, exist_ok=True)
    _write_record(out, sweep, [])
    results = []
    for point in sweep.points:
        done = out / "points" / point.id / "result.json"
        if done.is_file():
            log.info("point %s finished before: read, not retrained", point.id)
            results.append(json.loads(done.read_text()))
        else:
            results.append(run_point(sweep, point, out, progress))
            atomic_write_text(done, json.dumps(results[-1], indent=2))
        _write_record(out, sweep, results)
        if after_point is not None:
            after_point(results[-1])
    return results


def _write_record(out: Path, sweep: SweepConfig, results: list[dict]) -> None:
    atomic_write_text(out / "sweep.json", json.dumps({"config": sweep.to_dict(), "points": results}, indent=2))


def run_point(sweep: SweepConfig, point: Point, out: Path, progress: bool) -> dict[str, Any]:
    """Train (or continue training) one point, export it with INT8 and measure it."""
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.models.complexity import describe
    from edgeseg.models.registry import ModelConfig
    from edgeseg.train.loop import train

    folder = out / "points" / point.id
    cfg = train_config(sweep, point, folder / "run")
    # Points of a sweep share the data; those with the same spec share one slice store.
    cfg.cache = cfg.cache or str(out / "slice-store")
    last = folder / "run" / "last.pt"
    start = time.perf_counter()
    trained = train(cfg, resume=last.is_file(), progress=progress)
    train_seconds = round(time.perf_counter() - start, 1)
    epochs_seconds = round(sum(float(r.get("seconds", 0.0)) for r in trained["history"]), 1)
    bundle = _export(sweep, folder, progress)
    payload = read_checkpoint(folder / "run" / "best.pt")
    model = ModelConfig.from_dict(payload["model"])
    cost = describe(model, point.size)
    dice = validation_dice(folder / "run" / "best.pt", bundle, cfg.data, cfg.intensity)
    latency = measure_latency(bundle, sweep.measure)
    return {"id": point.id, **point.__dict__, "params": cost["params"], "gflop": round(cost["gflop"], 4),
            "epochs": cfg.epochs, "best_epoch": trained["best"]["epoch"], "train_val_dice": trained["best"]["val_dice"],
            "train_seconds_all_epochs": epochs_seconds, "train_seconds_this_run": train_seconds,
            **dice, **latency, "commands": point_commands(sweep, point, folder)}


def _export(sweep: SweepConfig, folder: Path, progress: bool) -> Path:
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    bundle = folder / "bundle"
    if (bundle / "manifest.json").is_file():
        return bundle
    opts = dict(sweep.export)
    calib = opts.pop("calib", sweep.recipe["data"])
    drop = opts.pop("max_dice_drop_int8", None)
    settings = ExportSettings(formats=("onnx",), int8=True).override(
        **opts, max_dice_drop={"fp16": None, "int8": drop})
    export_bundle(folder / "run" / "best.pt", bundle, settings, calib=calib, force=True, progress=progress,
                  intensity=sweep.recipe.get("intensity"), cache_dir=folder / "export-cache",
                  echo=lambda text: log.info("%s", text))
    return bundle


def validation_dice(checkpoint: Path, bundle: Path, data: str, intensity: str | None) -> dict[str, Any]:
    """Per-case foreground Dice on the run's validation cases: FP32 (the checkpoint through the
    torch runner) and INT8 (the bundle's INT8 graph on ONNX Runtime), mean over cases."""
    from edgeseg.data import open_dataset
    from edgeseg.data.open import recorded_slice_options
    from edgeseg.data.slice_set import check_window, map_labels
    from edgeseg.evaluate.model_eval import select_cases
    from edgeseg.metrics import dice
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    from edgeseg.runtime.postprocess_options import PostprocessOptions
    from edgeseg.runtime.segmenter import Segmenter

    model, payload = load_model(checkpoint)
    spec, names = checkpoint_spec(payload), list(payload["class_names"])
    post = PostprocessOptions.from_dict(payload.get("postprocess"), len(names))
    volumes, _ = select_cases(open_dataset(data, intensity=intensity, **recorded_slice_options(payload.get("train_config"))),
                              payload, "val")
    segmenters = {"fp32": Segmenter.from_module(model, spec, dict(enumerate(names)), post, max_batch=8),
                  "int8": Segmenter.load(bundle, backend="onnxruntime:int8")}
    scores: dict[str, list[float]] = {k: [] for k in segmenters}
    for vol in volumes:
        check_window(vol, spec)
        truth = map_labels(vol.label, payload["label_values"])
        for key, seg in segmenters.items():
            pred = seg.predict_volume(vol)  # batches of at most the bundle's max_batch
            scores[key].append(float(np.mean([dice(pred == c, truth == c) for c in range(1, len(names))])))
    return {"val_cases": [v.case_id for v in volumes],
            **{f"dice_{k}": round(float(np.mean(v)), 4) for k, v in scores.items()},
            **{f"dice_{k}_per_case": [round(x, 4) for x in v] for k, v in scores.items()}}


def measure_latency(bundle: Path, measure: dict[str, Any]) -> dict[str, Any]:
    """End-to-end latency of the auto backend on int16 slices (batch 1) and volume throughput."""
    from edgeseg.bench.runtime import bench_backend

    result = bench_backend(bundle, "auto", batches=tuple(measure["batches"]), size=measure["slice_size"],
                           runs=measure["runs"], warmup=measure["warmup"], volume_slices=measure["volume_slices"],
                           threads=measure["threads"])
    one = result["batches"].get("1") or next(iter(result["batches"].values()))
    return {"backend": result["chosen"], "slice_size": measure["slice_size"],
            "latency_ms_p50": one["end_to_end"]["p50"], "model_ms_p50": one["inference"]["p50"],
            "volume_slices_per_s": result["volume"]["pipelined_slices_per_s"], "volume_batch": result["volume"]["batch"]}
