"""Redo part of a finished sweep, training nothing: measure latency again (``--remeasure``),
export again through today's parity gate (``--regate``) and score the validation Dice again on
every INT8 runner here (``--rescore``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError, require
from edgeseg.sweep.config import SweepConfig, export_settings, train_config
from edgeseg.sweep.run import (_claim, _export, _int8_scheme, _result_path, _write_record, bundle_gate, check_point_ids,
                               existing_sweep_folder, finished_results, measure_latency, score_point)
from edgeseg.sweep.scoring import deployed_int8

log = logging.getLogger("edgeseg.sweep")
INTERRUPTED = ", export again interrupted"  # marks a result whose bundle --regate was replacing


def remeasure(sweep: SweepConfig, out: str | Path, rounds: int, only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Measure the latency of the finished points again, training nothing: ``rounds`` passes over
    the points in turn (so a change in the machine's load touches every point alike), each point
    keeping the measurement of its median round: for a final table measured on a quiet machine,
    after trainings that shared it. The points are held for the whole measurement, and each result
    is read again under that hold, so a --rescore or --regate of another process is neither lost
    nor measured half-way; points another process holds are named in a DataError after the
    others are written, and so are points whose --regate was interrupted (their bundle may be
    half replaced). Returns the results of all finished points in grid order."""
    if rounds < 1:
        raise DataError(f"--remeasure needs at least 1 round, got {rounds}")
    check_point_ids(sweep, only)
    out = existing_sweep_folder(sweep, out)
    targets = [r for r in finished_results(sweep, out) if not only or r["id"] in only]
    if not targets:
        raise DataError(f"no finished point to measure again under {out}")
    held: list[str] = []
    interrupted: list[str] = []
    with contextlib.ExitStack() as stack:
        mine: list[tuple[Path, dict[str, Any]]] = []
        for r in targets:
            locked = stack.enter_context(_locked(sweep, out, r, held))
            if locked is None:
                continue
            _, _, path, current = locked
            if str(current.get("gate", "")).endswith(INTERRUPTED):
                interrupted.append(current["id"])
                continue
            mine.append((path, current))
        rounds_of: dict[str, list[dict[str, Any]]] = {r["id"]: [] for _, r in mine}
        for i in range(rounds):
            for path, r in mine:
                rounds_of[r["id"]].append(measure_latency(path.parent / "bundle", sweep.measure))
                log.info("round %d/%d: %s %.2f ms", i + 1, rounds, r["id"], rounds_of[r["id"]][-1]["latency_ms_p50"])
        for path, r in mine:
            taken = sorted(rounds_of[r["id"]], key=lambda m: m["latency_ms_p50"])
            median = taken[(len(taken) - 1) // 2]
            # the deployed INT8 Dice follows the runner auto picked in the round kept (results
            # scored before every runner was are left as they are: --rescore scores them)
            deployed = deployed_int8(r, median["backend"]) if "dice_int8_runners" in r else {}
            atomic_write_text(path, json.dumps({
                **r, **median, **deployed, "latency_rounds_ms_p50": [m["latency_ms_p50"] for m in rounds_of[r["id"]]],
                "latency_rounds_backend": [m["backend"] for m in rounds_of[r["id"]]],
                "latency_measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    _finish(out, sweep, held, "--remeasure", _interrupted_text(interrupted))
    return finished_results(sweep, out)


def current_gate(sweep: SweepConfig) -> str:
    """The gate this version of edgeseg applies to the sweep's exports."""
    from edgeseg.export.profiles import MIN_CALIB_SLICES
    from edgeseg.export.verify import GATE_VERSION, gate_label

    if sweep.calib_refusal is not None:  # the gate does not depend on the calibration
        sweep = dataclasses.replace(sweep, calib_refusal=None, export={**sweep.export, "calib_slices": MIN_CALIB_SLICES})
    return gate_label(GATE_VERSION, export_settings(sweep)[0].structure_px)


def regate(sweep: SweepConfig, out: str | Path, only: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Export again, through today's gate, the finished points whose bundle passed another one
    (``gate`` in the result; results from before it was recorded count as ``v1``), training
    nothing: each gets a new bundle (INT8 again if the gate now passes it, FP32 alone if it now
    refuses it), its validation Dice and latency measured again; the training record is kept.
    Before a point's bundle is replaced its result is marked as being exported again, so a
    process killed part-way leaves a result that the reports do not compare and that the next
    ``--regate`` redoes. Points held by another process are left and named in a DataError
    after the others are done. Returns all finished results in grid order and the ids of the
    points exported again."""
    out, finished = _finished(sweep, out, only, "--regate exports finished points again")
    target = current_gate(sweep)
    if any(r["gate"] != target and not (only and r["id"] not in only) for r in finished.values()):
        if sweep.calib_refusal is not None:
            export_settings(sweep)  # refuses, before any point is marked, an export that would calibrate with it
        require("torch", "train", "edgeseg sweep")  # to export and score: before any point is marked
    redone, held = [], []
    for result in finished.values():
        if (only and result["id"] not in only) or result["gate"] == target:
            continue
        with _locked(sweep, out, result, held) as locked:
            if locked is None:
                continue
            point, folder, path, result = locked
            if result["gate"] == target:
                continue
            before = result["gate"].removesuffix(INTERRUPTED)
            log.info("point %s passed gate %s: exporting it again through %s", point.id, before, target)
            atomic_write_text(path, json.dumps({**result, "gate": before + INTERRUPTED}, indent=2))
            bundle, int8_refused = _export(sweep, folder, progress=False, again=True)
            cfg = train_config(sweep, point, folder / "run")
            latency = measure_latency(bundle, sweep.measure)
            dice = score_point(folder, None if int8_refused else bundle, cfg.data, cfg.intensity, latency["backend"])
            stale = ("latency_rounds_ms_p50", "latency_rounds_backend", "latency_measured_at")
            atomic_write_text(path, json.dumps({
                **{k: v for k, v in result.items() if k not in stale}, **dice, "int8_refused": int8_refused,
                "int8_scheme": None if int8_refused else _int8_scheme(bundle), "gate": bundle_gate(bundle),
                "gate_before": before, **latency}, indent=2))
        redone.append(point.id)
    _finish(out, sweep, held, "--regate")
    return finished_results(sweep, out), redone


def rescore(sweep: SweepConfig, out: str | Path, only: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Score the INT8 validation Dice of the finished points again on every runner here that may
    run their INT8 graph (``edgeseg.sweep.scoring``), training, exporting and measuring nothing:
    the deployed INT8 Dice becomes that of the runner ``auto`` picked when the point's latency
    was measured. The FP32 Dice is kept (the same checkpoint through the same torch runner).
    Points whose INT8 graph the gate refused are left as they are. Each result is replaced
    atomically once its point is scored; points held by another process are named in a
    DataError after the others are done. Returns all finished results in grid order and the
    ids of the points scored again."""
    out, finished = _finished(sweep, out, only, "--rescore scores finished points again")
    if any(not r.get("int8_refused") and not str(r.get("gate", "")).endswith(INTERRUPTED)
           and not (only and r["id"] not in only) for r in finished.values()):
        require("torch", "train", "edgeseg sweep")  # the validation cases are the checkpoint's
    redone, held, interrupted, unscorable = [], [], [], []
    try:
        for result in finished.values():
            if only and result["id"] not in only:
                continue
            with _locked(sweep, out, result, held) as locked:
                if locked is None:
                    continue
                point, folder, path, result = locked
                if result.get("int8_refused"):
                    continue
                if str(result.get("gate", "")).endswith(INTERRUPTED):  # its bundle may be half replaced
                    interrupted.append(point.id)
                    continue
                cfg = train_config(sweep, point, folder / "run")
                dice = score_point(folder, folder / "bundle", cfg.data, cfg.intensity, result["backend"], fp32=False)
                if result.get("val_cases") is not None and dice["val_cases"] != result["val_cases"]:
                    changed = sorted(set(dice["val_cases"]) ^ set(result["val_cases"]))
                    raise DataError(f"point {point.id}: its validation cases are not the ones it was scored on "
                                    f"(differing: {', '.join(changed[:5]) or 'their order'}); has the data changed?")
                backend = str(result.get("backend") or "")
                if backend.endswith(":int8") and backend not in dice["dice_int8_runners"]:
                    # what the point ships cannot be scored here: its result stays as it was
                    unscorable.append(f"{point.id} ({backend})")
                    continue
                log.info("point %s: INT8 Dice %s (deployed: %s)", point.id,
                         ", ".join(f"{k} {v:.4f}" for k, v in dice["dice_int8_runners"].items()), dice["dice_int8_backend"])
                atomic_write_text(path, json.dumps({**result, **dice}, indent=2))
            redone.append(point.id)
    except DataError:
        _write_record(out, sweep)  # sweep.json follows the results rescored before the stop
        raise
    problems = _interrupted_text(interrupted)
    if unscorable:
        problems.append(f"{', '.join(unscorable)}: auto deploys a runner that cannot run here, so "
                        f"{'its result was left as it was' if len(unscorable) == 1 else 'their results were left as they were'}"
                        "; run --rescore where it runs")
    _finish(out, sweep, held, "--rescore", problems)
    return finished_results(sweep, out), redone


def _finished(sweep: SweepConfig, out: str | Path, only: Sequence[str], what: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The checked sweep folder and its finished results by id; a DataError ending in ``what``
    when a point named with --point is not finished."""
    check_point_ids(sweep, only)
    out = existing_sweep_folder(sweep, out)
    finished = {r["id"]: r for r in finished_results(sweep, out)}
    unfinished = [i for i in only if i not in finished]
    if unfinished:
        raise DataError(f"{', '.join(unfinished)} {'is' if len(unfinished) == 1 else 'are'} not finished: {what}")
    return out, finished


def _interrupted_text(interrupted: list[str]) -> list[str]:
    """The sentence naming the points left because a --regate was interrupted replacing their bundle."""
    if not interrupted:
        return []
    return [f"{', '.join(interrupted)}: a --regate was interrupted while replacing "
            f"{'its bundle' if len(interrupted) == 1 else 'their bundles'}; run --regate first"]


def _finish(out: Path, sweep: SweepConfig, held: list[str], flag: str, problems: Sequence[str] = ()) -> None:
    """Write sweep.json; a DataError naming the points another process held and the other
    ``problems`` (each a sentence), when there are any."""
    _write_record(out, sweep)
    problems = list(problems)
    if held:
        problems.append(f"{', '.join(held)} {'is' if len(held) == 1 else 'are'} held by another process; "
                        f"run {flag} again when it has finished")
    if problems:
        raise DataError("; ".join(problems))


@contextlib.contextmanager
def _locked(sweep: SweepConfig, out: Path, listed: dict[str, Any], held: list[str]) -> Iterator[tuple | None]:
    """While this process holds the point of ``listed`` (a result as ``finished_results`` read
    it): the point, its folder, its result path and its result as it is on disk now (another
    process may have rewritten it since), with what ``finished_results`` filled in for older
    results kept; ``None``, with the point added to ``held``, when another process holds it."""
    point = next(p for p in sweep.points if p.id == listed["id"])
    path = _result_path(out, point)
    with _claim(out, point) as claimed:
        if not claimed:
            held.append(point.id)
            yield None
            return
        yield point, out / "points" / point.id, path, {**listed, **json.loads(path.read_text())}
