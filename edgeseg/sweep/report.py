"""Sweep outputs: the table (CSV and JSON), the Pareto front, the Dice-vs-latency plot, commands."""

from __future__ import annotations

import csv
import io
import json
import textwrap
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_path, atomic_write_text

COLUMNS = ("id", "model", "base", "depth", "size", "params", "gflop", "epochs", "best_epoch",
           "train_seconds_all_epochs", "dice_fp32", "dice_int8", "int8_refused", "int8_scheme", "backend", "latency_ms_p50", "model_ms_p50",
           "volume_slices_per_s", "machine", "pareto")
NOT_RECORDED = "not recorded"


def latency_machines(points: list[dict[str, Any]]) -> list[str]:
    """The machines the points' latencies were measured on (``not recorded`` for results written
    before the machine was recorded), in order of first appearance."""
    return list(dict.fromkeys(p.get("machine", NOT_RECORDED) for p in points))


def one_machine(machines: list[str]) -> bool:
    """True when every latency was measured on the same recorded machine (comparable)."""
    return len(machines) == 1 and machines[0] != NOT_RECORDED


def deployed_dice(point: dict[str, Any]) -> float:
    """The Dice of what the point's bundle ships: INT8, or FP32 where the gate refused INT8."""
    return point["dice_int8"] if point.get("dice_int8") is not None else point["dice_fp32"]


def pareto_front(points: list[dict[str, Any]], cost_key: str = "latency_ms_p50") -> set[str]:
    """Ids of the points no other point beats: none is at least as fast and as accurate, and better in one."""
    front = set()
    for p in points:
        dominated = any(
            q[cost_key] <= p[cost_key] and deployed_dice(q) >= deployed_dice(p)
            and (q[cost_key] < p[cost_key] or deployed_dice(q) > deployed_dice(p))
            for q in points if q is not p
        )
        if not dominated:
            front.add(p["id"])
    return front


def choose_default(points: list[dict[str, Any]], reference: str, max_dice_loss: float) -> dict[str, Any] | None:
    """The fastest point (end-to-end latency of the auto backend) whose Dice is at most
    ``max_dice_loss`` below the ``reference`` point's both as deployed and in FP32, with its ratios
    against the reference; None while the reference is not finished. Asking the FP32 model too
    keeps a point whose INT8 graph happened to score above its own FP32 model on a few
    validation slices (quantisation noise) from being chosen on that luck."""
    by_id = {p["id"]: p for p in points}
    ref = by_id.get(reference)
    if ref is None:
        return None
    floor, floor_fp32 = deployed_dice(ref) - max_dice_loss, ref["dice_fp32"] - max_dice_loss
    eligible = [p for p in points if deployed_dice(p) >= floor - 1e-12 and p["dice_fp32"] >= floor_fp32 - 1e-12]
    best = min(eligible, key=lambda p: (p["latency_ms_p50"], -deployed_dice(p)))  # the reference itself is eligible
    return {"chosen": best["id"], "reference": reference, "max_dice_loss": max_dice_loss,
            "dice": deployed_dice(best), "reference_dice": deployed_dice(ref),
            "dice_difference": round(deployed_dice(best) - deployed_dice(ref), 4),
            "speedup_end_to_end": round(ref["latency_ms_p50"] / best["latency_ms_p50"], 3),
            "speedup_model": round(ref["model_ms_p50"] / best["model_ms_p50"], 3),
            "gflop_ratio": round(ref["gflop"] / best["gflop"], 3),
            "volume_throughput_ratio": round(best["volume_slices_per_s"] / ref["volume_slices_per_s"], 3),
            "eligible": [p["id"] for p in eligible], "points_finished": len(points)}


def write_reports(out: str | Path, points: list[dict[str, Any]], choose: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write sweep.csv, results.json, commands.sh and pareto.png under ``out`` and, with a
    ``choose`` rule whose reference is finished, choice.json; returns the paths written.

    Latencies measured on different machines (sessions on other CPUs), or on a machine not
    recorded (results written before it was), are not compared: then no choice is made (a
    choice.json from before is removed) and the plot says so; ``edgeseg sweep --remeasure`` on
    one machine measures every point again."""
    out = Path(out)
    front = pareto_front(points)
    machines = latency_machines(points)
    rows = [{**p, "machine": p.get("machine", NOT_RECORDED), "pareto": p["id"] in front} for p in points]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": out / "sweep.csv", "json": out / "results.json", "commands": out / "commands.sh",
             "png": out / "pareto.png"}
    atomic_write_text(paths["csv"], text.getvalue())
    atomic_write_text(paths["json"], json.dumps(rows, indent=2))
    script = ["#!/bin/sh", "# The commands that reproduce each sweep point.", "set -e"]
    for p in rows:
        script += ["", f"# {p['id']}", *p["commands"]]
    atomic_write_text(paths["commands"], "\n".join(script) + "\n")
    choice = None
    if choose and one_machine(machines):
        choice = choose_default(points, choose["reference"], choose["max_dice_loss"])
    if choice is not None:
        paths["choice"] = out / "choice.json"
        atomic_write_text(paths["choice"], json.dumps({**choice, "machine": machines[0]}, indent=2) + "\n")
    elif not one_machine(machines):
        (out / "choice.json").unlink(missing_ok=True)
    plot_front(rows, paths["png"], choice, machines)
    return paths


def plot_front(rows: list[dict[str, Any]], path: Path, choice: dict[str, Any] | None = None,
               machines: list[str] | None = None) -> None:
    """Scatter of INT8 validation Dice against end-to-end latency, the Pareto front joined and ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    models = sorted({r["model"] for r in rows})
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        ax.scatter([r["latency_ms_p50"] for r in mine], [deployed_dice(r) for r in mine], label=model, color=f"C{i}", zorder=3)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms_p50"])
    ax.plot([r["latency_ms_p50"] for r in front], [deployed_dice(r) for r in front], "k--", lw=1, zorder=2, label="Pareto front")
    ax.scatter([r["latency_ms_p50"] for r in front], [deployed_dice(r) for r in front], s=160, facecolors="none",
               edgecolors="k", zorder=4)
    for r in rows:
        ax.annotate(f"b{r['base']} d{r['depth']} s{r['size']}", (r["latency_ms_p50"], deployed_dice(r)), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if choice is not None:  # the reference's Dice band, and the point chosen in it
        floor = choice["reference_dice"] - choice["max_dice_loss"]
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label=f"reference Dice - {choice['max_dice_loss']:g}")
        chosen = next(r for r in rows if r["id"] == choice["chosen"])
        ax.scatter([chosen["latency_ms_p50"]], [deployed_dice(chosen)], marker="*", s=260, color="gold",
                   edgecolors="k", zorder=5, label=f"chosen: {choice['chosen']}")
    size = rows[0]["slice_size"] if rows else 512
    ax.set_xlabel(f"end-to-end latency, auto backend, batch 1, {size}x{size} int16 slice (ms, p50)")
    ax.set_ylabel("validation per-case Dice (INT8; FP32 if INT8 refused)")
    if machines and not one_machine(machines):
        ax.set_title(f"latencies from {len(machines)} machine(s), not all recorded or not one: not comparable "
                     "(edgeseg sweep --remeasure on one)", fontsize=9, color="firebrick")
    elif machines:
        ax.set_title(textwrap.fill(f"latency measured on: {machines[0]}", 100), fontsize=8)  # a long flag list wraps
    ax.margins(x=0.12)  # room for the point labels, written to the right of each point
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
