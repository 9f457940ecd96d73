"""Sweep outputs: the table (CSV and JSON), the Pareto front, the Dice-vs-latency plot, commands.

A point is one training run; a variant (architecture, width, depth, size) has one run per seed of
the grid. The front and the default-model rule compare variants: the mean Dice over their runs
and the median latency (which does not depend on the weights)."""

from __future__ import annotations

import csv
import io
import json
import statistics
import textwrap
from pathlib import Path
from typing import Any

from edgeseg.atomic import atomic_files, atomic_path
from edgeseg.sweep.versions import differing_versions, versions_text

COLUMNS = ("id", "variant", "seed", "model", "base", "depth", "size", "params", "gflop", "epochs", "best_epoch",
           "train_seconds_all_epochs", "dice_fp32", "dice_int8", "dice_int8_backend", "dice_int8_runners", "int8_refused", "int8_scheme", "gate", "backend", "latency_ms_p50", "model_ms_p50",
           "volume_slices_per_s", "machine", "pareto")
VARIANT_COLUMNS = ("id", "model", "base", "depth", "size", "params", "gflop", "runs", "seeds", "dice_fp32",
                   "dice_fp32_sd", "dice_int8", "dice_deployed", "dice_deployed_sd", "dice_deployed_min",
                   "dice_deployed_max", "int8_refused_runs", "latency_ms_p50", "model_ms_p50", "volume_slices_per_s", "pareto")
NOT_RECORDED = "not recorded"


def latency_machines(points: list[dict[str, Any]]) -> list[str]:
    """The machines the points' latencies were measured on (``not recorded`` for results written
    before the machine was recorded), in order of first appearance."""
    return list(dict.fromkeys(p.get("machine", NOT_RECORDED) for p in points))


def one_machine(machines: list[str]) -> bool:
    """True when every latency was measured on the same recorded machine (comparable)."""
    return len(machines) == 1 and machines[0] != NOT_RECORDED


def result_gates(points: list[dict[str, Any]]) -> list[str]:
    """The parity gates the points' bundles passed (``v1`` for results written before the gate
    was recorded), in order of first appearance: what a point deploys, INT8 or FP32, depends on it."""
    return list(dict.fromkeys(p.get("gate", "v1") for p in points))


EVERY_RUNNER, ONE_RUNNER, NOT_AUTOS = "every runner", "one runner (older results)", "not the runner auto picked"


def int8_scoring(point: dict[str, Any]) -> str | None:
    """Where the INT8 Dice the point deploys was scored: ``EVERY_RUNNER`` (each INT8 runner here,
    the deployed one being the runner ``auto`` picked), ``ONE_RUNNER`` (results written before
    that) or ``NOT_AUTOS`` (``auto`` picked an INT8 runner whose Dice was not scored, e.g. one
    that cannot run where the point was scored); None when the point deploys no INT8 graph (the
    gate refused it, or ``auto`` picked an FP32 runner: its FP32 Dice is what counts)."""
    backend = str(point.get("backend") or "")
    if point.get("int8_refused") or (backend and not backend.endswith(":int8")):
        return None
    if point.get("dice_int8") is None:
        # an INT8 graph that auto runs but that no runner scored: not the FP32 Dice's to stand in
        return NOT_AUTOS if "dice_int8_runners" in point and backend else None
    if "dice_int8_runners" not in point:
        return ONE_RUNNER
    return NOT_AUTOS if backend and backend != point.get("dice_int8_backend") else EVERY_RUNNER


def int8_scorings(points: list[dict[str, Any]]) -> dict[str, int]:
    """How many points' INT8 Dice was scored each way (:func:`int8_scoring`), in order of first
    appearance. The rule compares points only when that is ``EVERY_RUNNER`` for all of them (or
    ``ONE_RUNNER`` for all, a sweep written before): one runner's INT8 masks differ from
    another's; ``edgeseg sweep --rescore`` scores the others again."""
    counts: dict[str, int] = {}
    for p in points:
        if (kind := int8_scoring(p)) is not None:
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def comparable_scorings(points: list[dict[str, Any]]) -> bool:
    """Whether the points' INT8 Dice can be compared (:func:`int8_scorings`)."""
    kinds = set(int8_scorings(points))
    return kinds <= {EVERY_RUNNER} or kinds == {ONE_RUNNER}


def _runs_int8(point: dict[str, Any]) -> bool:
    """Whether the point deploys its INT8 graph: it has one, and the runner ``auto`` picked when
    its latency was measured (``backend``, ``name:precision``) runs INT8 (or is not recorded)."""
    return point.get("dice_int8") is not None and str(point.get("backend") or ":int8").endswith(":int8")


def deployed_dice(point: dict[str, Any]) -> float:
    """The Dice of what the point's bundle ships: INT8 on the runner ``auto`` picks, or FP32
    where the gate refused INT8 or ``auto`` picked an FP32 runner (for a variant, the mean of its
    runs' values)."""
    if "dice_deployed" in point:
        return point["dice_deployed"]
    return point["dice_int8"] if _runs_int8(point) else point["dice_fp32"]


def _deployed_per_case(run: dict[str, Any]) -> list[float] | None:
    return run.get("dice_int8_per_case") if _runs_int8(run) else run.get("dice_fp32_per_case")


def paired_gap(candidate: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any] | None:
    """How sure a variant's Dice difference from the reference is, from their runs taken in
    pairs: a run of each with the same seed validates on the same cases (the split follows the
    seed). Over the seed pairs: the mean of the per-seed differences of mean deployed Dice and its
    two-sided 95 % Student-t interval (None under two pairs). Over the case pairs of those seeds:
    the median per-case difference and the Wilcoxon signed-rank p-value (None where no case
    differs). None when the two share no seed (or the rows carry no runs). Runs that record no
    seed or no validation cases (written before either was recorded) take no part, and a seed
    counts once on each side."""

    def by_seed(row: dict[str, Any]) -> dict[Any, dict[str, Any]]:
        runs: dict[Any, dict[str, Any]] = {}
        for r in row.get("runs_detail", []):
            if r["seed"] is not None and r["val_cases"] is not None:
                runs.setdefault(r["seed"], r)
        return runs

    ref = by_seed(reference)
    pairs = [(c, ref[seed]) for seed, c in by_seed(candidate).items()
             if seed in ref and c["val_cases"] == ref[seed]["val_cases"]]
    if not pairs:
        return None
    from scipy import stats

    gaps = [c["dice"] - r["dice"] for c, r in pairs]
    mean, n = statistics.fmean(gaps), len(gaps)
    out: dict[str, Any] = {"seeds": n, "gap_mean": round(mean, 4), "gap_ci95": None}
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1)) * statistics.stdev(gaps) / n**0.5
        out["gap_ci95"] = [round(mean - half, 4), round(mean + half, 4)]
    cases = [a - b for c, r in pairs if c["per_case"] and r["per_case"] for a, b in zip(c["per_case"], r["per_case"])]
    if cases:
        out.update(case_pairs=len(cases), case_gap_median=round(statistics.median(cases), 4),
                   case_wilcoxon_p=round(float(stats.wilcoxon(cases).pvalue), 4) if any(cases) else None)
    return out


def _spread(values: list[float]) -> dict[str, float | None]:
    """Mean, sample standard deviation (None for one value), min and max, rounded to 4 places."""
    sd = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": round(statistics.fmean(values), 4), "sd": None if sd is None else round(sd, 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def variant_rows(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, in order of first appearance: its runs taken together (mean Dice and
    spread over the seeds, median latency). A result written before variants were recorded is
    its own variant (its id)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        groups.setdefault(p.get("variant", p["id"]), []).append(p)
    rows = []
    for variant, runs in groups.items():
        first = runs[0]
        deployed, fp32 = _spread([deployed_dice(r) for r in runs]), _spread([r["dice_fp32"] for r in runs])
        int8 = [r.get("dice_int8") for r in runs]
        row = {k: first[k] for k in ("model", "base", "depth", "size", "params", "gflop", "slice_size") if k in first}
        row.update(id=variant, runs=len(runs), run_ids=[r["id"] for r in runs], seeds=[r.get("seed") for r in runs],
                   dice_fp32=fp32["mean"], dice_fp32_sd=fp32["sd"],
                   dice_int8=None if None in int8 else _spread(int8)["mean"],
                   dice_deployed=deployed["mean"], dice_deployed_sd=deployed["sd"],
                   dice_deployed_min=deployed["min"], dice_deployed_max=deployed["max"],
                   runs_dice_deployed=[deployed_dice(r) for r in runs],
                   # for paired_gap: each run's seed, validation cases and deployed Dice, per case too
                   runs_detail=[{"seed": r.get("seed"), "val_cases": r.get("val_cases"), "dice": deployed_dice(r),
                                 "per_case": _deployed_per_case(r)} for r in runs],
                   # runs whose INT8 graph the gate refused: they ship (and were timed) in FP32
                   int8_refused_runs=sum(bool(r.get("int8_refused", r.get("dice_int8") is None)) for r in runs),
                   latency_ms_p50=round(statistics.median(r["latency_ms_p50"] for r in runs), 4),
                   model_ms_p50=round(statistics.median(r["model_ms_p50"] for r in runs), 4),
                   volume_slices_per_s=round(statistics.median(r["volume_slices_per_s"] for r in runs), 4))
        rows.append(row)
    return rows


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


def choose_default(points: list[dict[str, Any]], reference: str, max_dice_loss: float,
                   min_runs: int = 1) -> dict[str, Any] | None:
    """The fastest variant (end-to-end latency of the auto backend) whose Dice is at most
    ``max_dice_loss`` below the ``reference`` variant's both as deployed and in FP32, with its
    ratios against the reference; None while the reference has fewer than ``min_runs`` finished
    runs. ``points`` are variant rows (:func:`variant_rows`: Dice is the mean over a variant's
    seeds), or single runs; a variant with fewer than ``min_runs`` runs takes no part, so one
    lucky seed is not chosen. Asking the FP32 model too keeps a point whose INT8 graph happened
    to score above its own FP32 model on a few validation slices (quantisation noise) from being
    chosen on that luck."""
    by_id = {p["id"]: p for p in points}
    ref = by_id.get(reference)
    if ref is None or ref.get("runs", 1) < min_runs:
        return None
    floor, floor_fp32 = deployed_dice(ref) - max_dice_loss, ref["dice_fp32"] - max_dice_loss
    eligible = [p for p in points if deployed_dice(p) >= floor - 1e-12 and p["dice_fp32"] >= floor_fp32 - 1e-12
                and p.get("runs", 1) >= min_runs]
    best = min(eligible, key=lambda p: (p["latency_ms_p50"], -deployed_dice(p)))  # the reference itself is eligible

    def against_ref(p: dict[str, Any]) -> dict[str, Any]:
        diff = {"dice_difference": round(deployed_dice(p) - deployed_dice(ref), 4),
                "dice_fp32_difference": round(p["dice_fp32"] - ref["dice_fp32"], 4),
                "speedup_end_to_end": round(ref["latency_ms_p50"] / p["latency_ms_p50"], 3)}
        paired = paired_gap(p, ref) if p is not ref else None
        return {**diff, "paired": paired} if paired else diff

    # The variants faster than the choice that missed the band, closest miss first: what a
    # looser margin or more runs would have to change.
    missed = sorted(({"id": p["id"], **against_ref(p)} for p in points
                     if p.get("runs", 1) >= min_runs and p["latency_ms_p50"] < best["latency_ms_p50"]),
                    key=lambda m: (-min(m["dice_difference"], m["dice_fp32_difference"]), m["id"]))
    return {"chosen": best["id"], "reference": reference, "max_dice_loss": max_dice_loss,
            "dice": deployed_dice(best), "reference_dice": deployed_dice(ref), **against_ref(best),
            "speedup_model": round(ref["model_ms_p50"] / best["model_ms_p50"], 3),
            "gflop_ratio": round(ref["gflop"] / best["gflop"], 3),
            "volume_throughput_ratio": round(best["volume_slices_per_s"] / ref["volume_slices_per_s"], 3),
            "runs": best.get("runs", 1), "reference_runs": ref.get("runs", 1), "min_runs": min_runs,
            "dice_sd": best.get("dice_deployed_sd"), "reference_dice_sd": ref.get("dice_deployed_sd"),
            "eligible": [p["id"] for p in eligible], "faster_missed": missed, "points_finished": len(points),
            "too_few_runs": [p["id"] for p in points if p.get("runs", 1) < min_runs]}


def no_choice_reason(variants: list[dict[str, Any]], choose: dict[str, Any]) -> str:
    """Why the rule cannot choose yet (the reference unfinished, or short of runs)."""
    ref = next((v for v in variants if v["id"] == choose["reference"]), None)
    if ref is None:
        return f"the reference {choose['reference']} has no finished run"
    return f"the reference {choose['reference']} has {ref['runs']} of the {choose.get('min_runs', 1)} finished runs the rule needs"


def write_reports(out: str | Path, points: list[dict[str, Any]], choose: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write sweep.csv and results.json (one row per run), variants.csv (one per variant, its runs
    together), commands.sh and pareto.png under ``out`` and, with a ``choose`` rule whose reference
    has its runs, choice.json (else one from before is removed); returns the paths written.

    Latencies measured on different machines (sessions on other CPUs), or on a machine not
    recorded (results written before it was), are not compared: then no choice is made (a
    choice.json from before is removed) and the plot says so; ``edgeseg sweep --remeasure`` on
    one machine measures every point again. Nor are runs whose bundles passed different parity
    gates (:func:`result_gates`; ``edgeseg sweep --regate`` exports them again), nor runs whose
    INT8 Dice was scored on different runners (:func:`int8_scorings`; ``--rescore``), nor latencies
    measured with different library versions (:func:`edgeseg.sweep.versions.differing_versions`;
    ``--remeasure``) unless ``choose`` says ``accept_mixed_versions``: then choice.json lists them
    under ``mixed_versions``."""
    out = Path(out)
    variants = variant_rows(points)
    front = pareto_front(variants)
    machines = latency_machines(points)
    rows = [{**p, "machine": p.get("machine", NOT_RECORDED), "gate": p.get("gate", "v1"),
             "pareto": p.get("variant", p["id"]) in front} for p in points]
    variants = [{**v, "pareto": v["id"] in front} for v in variants]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "dice_int8_runners": " ".join(f"{k}={v}" for k, v in (r.get("dice_int8_runners") or {}).items())}
                     for r in rows)
    paths = {"csv": out / "sweep.csv", "json": out / "results.json", "commands": out / "commands.sh",
             "png": out / "pareto.png", "variants": out / "variants.csv"}
    texts = {"csv": text.getvalue()}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=VARIANT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({**v, "seeds": " ".join("-" if x is None else str(x) for x in v["seeds"])} for v in variants)
    texts["variants"] = text.getvalue()
    texts["json"] = json.dumps(rows, indent=2)
    script = ["#!/bin/sh", "# The commands that reproduce each sweep point.", "set -e"]
    for p in rows:
        script += ["", f"# {p['id']}", *p["commands"]]
    texts["commands"] = "\n".join(script) + "\n"
    choice = None
    mixed = differing_versions(points)
    if (choose and one_machine(machines) and len(result_gates(points)) == 1 and comparable_scorings(points)
            and (not mixed or choose.get("accept_mixed_versions"))):
        choice = choose_default(variants, choose["reference"], choose["max_dice_loss"], choose.get("min_runs", 1))
    if choice is not None:
        paths["choice"] = out / "choice.json"
        record = {**choice, "machine": machines[0], **({"mixed_versions": mixed} if mixed else {})}
        texts["choice"] = json.dumps(record, indent=2) + "\n"
    # the reports land as one set (atomic_files), a choice.json from before going with them when
    # there is none now (it would mislead: the reference since short of runs, or measured
    # elsewhere): a stop or a failed plot never leaves this run's table beside an earlier plot
    with atomic_files(out, [path.name for path in paths.values()], drop=[] if choice else ["choice.json"]) as staged:
        for key, content in texts.items():
            staged[paths[key].name].write_text(content, encoding="utf-8")
        plot_front(variants, staged[paths["png"].name], choice, machines, mixed)
    return paths


def plot_front(rows: list[dict[str, Any]], path: Path, choice: dict[str, Any] | None = None,
               machines: list[str] | None = None, mixed: dict[str, dict[str, int]] | None = None) -> None:
    """Write :func:`front_figure` as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = front_figure(rows, choice, machines, mixed)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def front_figure(rows: list[dict[str, Any]], choice: dict[str, Any] | None = None,
                 machines: list[str] | None = None, mixed: dict[str, dict[str, int]] | None = None):
    """Scatter of INT8 validation Dice against end-to-end latency, the Pareto front joined and
    ringed; ``rows`` are variants (or single runs): a variant of several runs shows them as small
    dots and their range as a bar. The legend sits under the plot: points can lie anywhere
    in it, and inside, ``loc="best"`` still covered some of them and their labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    models = sorted({r["model"] for r in rows})
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        ax.scatter([r["latency_ms_p50"] for r in mine], [deployed_dice(r) for r in mine], label=model, color=f"C{i}", zorder=3)
        for r in (r for r in mine if r.get("runs", 1) > 1):
            ax.vlines(r["latency_ms_p50"], r["dice_deployed_min"], r["dice_deployed_max"], color=f"C{i}", lw=1.5, zorder=3)
            ax.scatter([r["latency_ms_p50"]] * r["runs"], r["runs_dice_deployed"], s=10, color=f"C{i}", alpha=0.5, zorder=3)
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_ms_p50"])
    ax.plot([r["latency_ms_p50"] for r in front], [deployed_dice(r) for r in front], "k--", lw=1, zorder=2, label="Pareto front")
    ax.scatter([r["latency_ms_p50"] for r in front], [deployed_dice(r) for r in front], s=160, facecolors="none",
               edgecolors="k", zorder=4)
    for r in rows:
        label = f"b{r['base']} d{r['depth']} s{r['size']}" + (f" ({r['runs']} seeds)" if r.get("runs", 1) > 1 else "")
        ax.annotate(label, (r["latency_ms_p50"], deployed_dice(r)), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if choice is not None:  # the reference's Dice band, and the point chosen in it
        floor = choice["reference_dice"] - choice["max_dice_loss"]
        ax.axhline(floor, color="grey", lw=0.8, ls=":", label=f"reference Dice - {choice['max_dice_loss']:g}")
        chosen = next(r for r in rows if r["id"] == choice["chosen"])
        ax.scatter([chosen["latency_ms_p50"]], [deployed_dice(chosen)], marker="*", s=260, color="gold",
                   edgecolors="k", zorder=5, label=f"chosen: {choice['chosen']}")
    size = rows[0]["slice_size"] if rows else 512
    ax.set_xlabel(f"end-to-end latency, auto backend, batch 1, {size}x{size} int16 slice (ms, p50)")
    several = any(r.get("runs", 1) > 1 for r in rows)
    ax.set_ylabel("validation per-case Dice as deployed" + ("\n(mean over seeds, bar: range)" if several else ""))
    if machines and not one_machine(machines):
        ax.set_title(f"latencies from {len(machines)} machine(s), not all recorded or not one: not comparable "
                     "(edgeseg sweep --remeasure on one)", fontsize=9, color="firebrick")
    elif mixed:  # chosen only where [choose] accepts it, and then still said on the plot
        ax.set_title(textwrap.fill(f"latencies measured with different library versions: {versions_text(mixed)}", 100),
                     fontsize=8, color="firebrick")
    elif machines:
        ax.set_title(textwrap.fill(f"latency measured on: {machines[0]}", 100), fontsize=8)  # a long flag list wraps
    ax.margins(x=0.12)  # room for the point labels, written to the right of each point
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3) or 1, fontsize=8, frameon=False)
    return fig
