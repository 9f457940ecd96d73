"""Sweep outputs: the table (CSV and JSON), the Pareto front, the Dice-vs-latency plot, commands."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_path, atomic_write_text

COLUMNS = ("id", "model", "base", "depth", "size", "params", "gflop", "epochs", "best_epoch",
           "train_seconds_all_epochs", "dice_fp32", "dice_int8", "int8_refused", "backend", "latency_ms_p50", "model_ms_p50",
           "volume_slices_per_s", "pareto")


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


def write_reports(out: str | Path, points: list[dict[str, Any]]) -> dict[str, Path]:
    """Write sweep.csv, results.json, commands.sh and pareto.png under ``out``; returns their paths."""
    out = Path(out)
    front = pareto_front(points)
    rows = [{**p, "pareto": p["id"] in front} for p in points]
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
    plot_front(rows, paths["png"])
    return paths


def plot_front(rows: list[dict[str, Any]], path: Path) -> None:
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
    size = rows[0]["slice_size"] if rows else 512
    ax.set_xlabel(f"end-to-end latency, auto backend, batch 1, {size}x{size} int16 slice (ms, p50)")
    ax.set_ylabel("validation per-case Dice (INT8; FP32 if INT8 refused)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
