"""Run a sweep: per point train (resumable), export to INT8 through the gate, measure; then report.

Layout under the sweep folder ``OUT``::

    sweep.json        the checked sweep file and, per finished point, its result
    points/ID/run/    the training run (last.pt lets a killed training continue)
    points/ID/bundle/ the exported bundle (INT8 gate passed)
    points/ID/result.json   written last and atomically: a point with it is finished

A finished point is read, never retrained; a killed sweep restarts at the first unfinished one,
and a killed training continues from its last epoch. The folder stays this sweep's when its grid
changes (points are named by what the grid sets), not when its recipe, export or measurement does. Several processes may run one sweep folder at
once (one per GPU, or one per core group): each point is claimed with an ``flock`` on
``points/ID/.lock``, and a process skips the points another one holds, so the processes share out
the grid. ``sweep.json`` always lists every point finished on disk, whoever finished it.
Measuring or exporting finished points again is :mod:`edgeseg.sweep.redo`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError, require
from edgeseg.sweep.config import Point, SweepConfig, export_settings, identity, train_config
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
        if identity(saved) != identity(json.loads(json.dumps(sweep.to_dict()))):
            raise DataError(f"{out} holds a different sweep; choose another --out to run this one")
    elif out.is_dir() and any(not _sweep_starting(entry) for entry in out.iterdir()):
        raise DataError(f"sweep output {out} exists and is not a sweep folder; choose another --out")
    return out


def existing_sweep_folder(sweep: SweepConfig, out: str | Path) -> Path:
    """``check_sweep_folder`` for the modes that only read or redo a sweep: the folder must hold
    this sweep already (they never start one)."""
    if not (Path(out) / "sweep.json").is_file():
        raise DataError(f"{out} holds no sweep (no sweep.json); run the sweep first")
    return check_sweep_folder(sweep, out)


def _sweep_starting(entry: Path) -> bool:
    """Entries another process starting this sweep may have made before its sweep.json is in place."""
    return entry.name == "points" or entry.name.startswith(".sweep.json.")


def run_sweep(sweep: SweepConfig, out: str | Path, progress: bool = False,
              after_point: Callable[[dict], None] | None = None,
              only: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Run every unfinished point of ``sweep`` under ``out`` that no other process is running,
    in grid order (only the points whose ids are in ``only``, in the order given there, when it
    is given).

    Returns the results of all finished points in grid order and the ids of the points another
    process still holds (their results are read by whichever run comes last)."""
    check_point_ids(sweep, only)
    out = check_sweep_folder(sweep, out)
    by_id = {p.id: p for p in sweep.points}
    order = [by_id[i] for i in dict.fromkeys(only)] if only else list(sweep.points)
    if any(not _result_path(out, point).is_file() for point in order):
        if sweep.calib_refusal is not None:
            export_settings(sweep)  # refuses, before any work, a point that would calibrate with it
        require("torch", "train", "edgeseg sweep")  # to train: a sweep of finished points only reports
    if sweep.calib_refusal is not None:
        log.warning("%s; the finished points were calibrated with it, as edgeseg did before 2026-12-06",
                    sweep.calib_refusal)
    out.mkdir(parents=True, exist_ok=True)
    _write_record(out, sweep)
    held_elsewhere = []
    for point in order:
        done = _result_path(out, point)
        if done.is_file():
            log.info("point %s finished before: read, not retrained", point.id)
            continue
        with _claim(out, point) as claimed:
            if not claimed:
                log.info("point %s is being run by another process: left to it", point.id)
                held_elsewhere.append(point.id)
                continue
            if done.is_file():  # finished by another process between the check and the claim
                continue
            result = run_point(sweep, point, out, progress)
            atomic_write_text(done, json.dumps(result, indent=2))
        _write_record(out, sweep)
        if after_point is not None:
            after_point(result)
    return finished_results(sweep, out), held_elsewhere


def check_point_ids(sweep: SweepConfig, ids: Sequence[str]) -> None:
    """Every id names a point of the grid (checked before any work)."""
    known = [p.id for p in sweep.points]
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DataError(f"{', '.join(unknown)} {'is not a point' if len(unknown) == 1 else 'are not points'} "
                        f"of this sweep; its points: {', '.join(known)}")


def sweep_status(sweep: SweepConfig, out: str | Path, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Where each point of the sweep under ``out`` stands, reading only: ``finished`` (with its
    result), ``running`` (another process holds its lock), ``stopped`` (trained part-way, no one
    running it) or ``not started``; with the epochs done, the best validation Dice so far and the
    recent seconds per epoch (the mean of the last 5) from the run's metrics.json; only the
    points named in ``only``, when it is given."""
    check_point_ids(sweep, only)
    out = existing_sweep_folder(sweep, out)
    rows, finished = [], {r["id"]: r for r in finished_results(sweep, out)}
    for point in sweep.points:
        if only and point.id not in only:
            continue
        # The epochs the point trains for: the sweep's [recipe], else its named recipe's, else the default.
        epochs = train_config(sweep, point, out / "points" / point.id / "run").epochs
        row: dict[str, Any] = {"id": point.id, "epochs": epochs, "epoch": 0}
        history = _history(out / "points" / point.id / "run" / "metrics.json")
        if history:
            recent = [float(h.get("seconds", 0.0)) for h in history[-5:]]
            row.update(epoch=int(history[-1]["epoch"]), best_val_dice=max(float(h["val_dice"]) for h in history),
                       seconds_per_epoch=sum(recent) / len(recent))
        if point.id in finished:
            row.update(state="finished", result=finished[point.id])
        elif _held(out / "points" / point.id / ".lock"):
            row["state"] = "running"
        else:
            row["state"] = "stopped" if history else "not started"
        rows.append(row)
    return rows


def _history(metrics: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(metrics.read_text()).get("history") or [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return []


def _held(lock: Path) -> bool:
    """Whether a process holds ``lock`` (the flock :func:`_claim` takes), read from /proc/locks
    without taking it: a probe with the lock itself would, for its moment, make a sweep process
    claiming the point skip it. Never creates the file."""
    try:
        inode = str(os.stat(lock).st_ino)
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            rows = [line.split() for line in table]
    except OSError:  # no lock file: nobody claimed the point; no /proc: not Linux, which edgeseg needs
        return False
    return any(len(f) > 5 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == inode for f in rows)


def _result_path(out: Path, point: Point) -> Path:
    return out / "points" / point.id / "result.json"


@contextlib.contextmanager
def _claim(out: Path, point: Point) -> Iterator[bool]:
    """Hold ``points/ID/.lock`` without waiting; yields whether this process got it."""
    lock = out / "points" / point.id / ".lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finished_results(sweep: SweepConfig, out: Path) -> list[dict[str, Any]]:
    """The results of the points finished on disk, in grid order."""
    results = []
    for point in sweep.points:
        path = _result_path(out, point)
        if path.is_file():
            try:
                result = json.loads(path.read_text())
            except (json.JSONDecodeError, OSError):
                raise DataError(f"{path} is unreadable; remove it to run point {point.id} again") from None
            history = _history(path.parent / "run" / "metrics.json")
            trained = int(history[-1].get("epoch", 0)) if history else 0
            if isinstance(result.get("epochs"), int) and trained > result["epochs"]:
                # the run was continued by hand after its result was written: the result's Dice,
                # bundle and latency are the shorter run's
                raise DataError(f"point {point.id}'s run was trained to {trained} epochs after its result was written "
                                f"at {result['epochs']}; remove {path} to export and score it again")
            # Results written before seeds were a grid axis name neither: the point says both.
            result.setdefault("variant", point.variant)
            if "seed" not in result:
                result["seed"] = train_config(sweep, point, path.parent / "run").seed
            if "gate" not in result:  # nor the gate its bundle passed: its parity.json does
                try:
                    result["gate"] = bundle_gate(path.parent / "bundle")
                except DataError:
                    result["gate"] = "v1"
            results.append(result)
    return results


def _write_record(out: Path, sweep: SweepConfig) -> None:
    atomic_write_text(out / "sweep.json", json.dumps({"config": sweep.to_dict(),
                                                      "points": finished_results(sweep, out)}, indent=2))


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
    bundle, int8_refused = _export(sweep, folder, progress)
    payload = read_checkpoint(folder / "run" / "best.pt")
    model = ModelConfig.from_dict(payload["model"])
    cost = describe(model, point.size)
    latency = measure_latency(bundle, sweep.measure)
    dice = score_point(folder, None if int8_refused else bundle, cfg.data, cfg.intensity, latency["backend"])
    if not int8_refused and latency["backend"].endswith(":int8") and dice["dice_int8_backend"] != latency["backend"]:
        log.warning("point %s: the INT8 Dice of %s, which auto picked, could not be scored here; the point is not "
                    "compared until it is (edgeseg sweep --rescore where it runs)", point.id, latency["backend"])
    return {"id": point.id, **point.__dict__, "variant": point.variant, "seed": cfg.seed, "params": cost["params"], "gflop": round(cost["gflop"], 4),
            "epochs": cfg.epochs, "best_epoch": trained["best"]["epoch"], "train_val_dice": trained["best"]["val_dice"],
            "train_seconds_all_epochs": epochs_seconds, "train_seconds_this_run": train_seconds,
            **dice, "int8_refused": int8_refused, "int8_scheme": None if int8_refused else _int8_scheme(bundle),
            "gate": bundle_gate(bundle), **latency, "commands": point_commands(sweep, point, folder)}


def bundle_gate(bundle: Path) -> str:
    """The parity gate the bundle passed (``edgeseg.export.verify.gate_label``), from its parity.json."""
    from edgeseg.export.verify import gate_label

    try:
        parity = json.loads((bundle / "parity.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{bundle / 'parity.json'} is missing or unreadable; remove the point's result.json "
                        f"and bundle to export it again") from None
    return gate_label(parity.get("gate_version"), parity.get("structure_px"))


def _int8_scheme(bundle: Path) -> str | None:
    """The INT8 scheme of the bundle's INT8 graph, ``tensorrt`` for one exported before the
    schemes (the only form then), None without an INT8 graph."""
    from edgeseg.runtime.manifest import read_manifest

    entries = [a for a in read_manifest(bundle).artifacts if a.precision == "int8"]
    return entries[0].extra.get("int8_scheme", "tensorrt") if entries else None


def _export(sweep: SweepConfig, folder: Path, progress: bool, again: bool = False) -> tuple[Path, str | None]:
    """The point's bundle and, when the gate refused INT8 on every runner, why: the point is then
    exported in FP32 alone and measured as such, so a long training is never lost to the gate.
    An existing bundle is kept unless ``again`` (then it is replaced only once the new one passed)."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.verify import ParityError

    bundle, refused_record = folder / "bundle", folder / "int8-refused.txt"
    if (bundle / "manifest.json").is_file() and not again:
        return bundle, (refused_record.read_text().strip() if refused_record.is_file() else None)
    settings, calib = export_settings(sweep)
    args = dict(force=True, progress=progress, intensity=sweep.recipe.get("intensity"),
                cache_dir=folder / "export-cache", echo=lambda text: log.info("%s", text))
    try:
        export_bundle(folder / "run" / "best.pt", bundle, settings, calib=calib, **args)
        refused_record.unlink(missing_ok=True)
        return bundle, None
    except ParityError as exc:
        reason = str(exc)
    log.warning("point %s: %s; exported in FP32 only", folder.name, reason)
    export_bundle(folder / "run" / "best.pt", bundle, settings.override(int8=False), calib=calib, **args)
    atomic_write_text(refused_record, reason + "\n")
    return bundle, reason


def measure_latency(bundle: Path, measure: dict[str, Any]) -> dict[str, Any]:
    """End-to-end latency of the auto backend on int16 slices (batch 1) and volume throughput.

    Measured in a fresh interpreter (``spawn``), as a deployment process would run it: one that
    never imported torch nor trained, with no training threads or DataLoader processes left in
    it. The runtime's backend probe there loads and releases each runner; releasing an
    OpenVINO runner in the process that had just trained with DataLoader workers was followed
    by a corrupted interpreter (a crash some seconds later), which a fresh process avoids."""
    from edgeseg.bench.runtime import bench_backend

    options = dict(batches=tuple(measure["batches"]), size=measure["slice_size"], runs=measure["runs"],
                   warmup=measure["warmup"], volume_slices=measure["volume_slices"], threads=measure["threads"])
    result = in_fresh_process(bench_backend, str(bundle), "auto", **options)
    one = result["batches"].get("1") or next(iter(result["batches"].values()))
    return {"backend": result["chosen"], "machine": result["machine"], "versions": result["versions"],
            "slice_size": measure["slice_size"],
            "latency_ms_p50": one["end_to_end"]["p50"], "model_ms_p50": one["inference"]["p50"],
            "volume_slices_per_s": result["volume"]["pipelined_slices_per_s"], "volume_batch": result["volume"]["batch"]}


def score_point(folder: Path, bundle: Path | None, data: str, intensity: str | None, deployed: str | None,
                fp32: bool = True) -> dict[str, Any]:
    """``edgeseg.sweep.scoring.validation_dice`` of the point's best checkpoint, in a fresh
    interpreter like ``measure_latency`` (it loads and releases OpenVINO runners)."""
    from edgeseg.sweep.scoring import validation_dice

    return in_fresh_process(validation_dice, folder / "run" / "best.pt", bundle, data, intensity, deployed, fp32)


def in_fresh_process(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run in a new interpreter (``spawn``); its result or its exception.
    Interrupted (Ctrl-C, SIGTERM), the new interpreter is stopped rather than waited for."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return pool.submit(fn, *args, **kwargs).result()
    except BaseException:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before Python 3.14
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
