"""Compare training runs: a table of what differs between them and how well each did, and a plot.

A run directory holds the trainer's ``metrics.json`` (``config``, ``history``, ``best``,
``spec``) and, once ``edgeseg evaluate`` has run, ``eval/eval.json`` whose ``summary`` is
:func:`edgeseg.metrics.summarise` output keyed by class name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError
from edgeseg.report.curves import best_epoch_index, history_series
from edgeseg.report.output import format_cell, new_figure, save_png, to_json_compatible

METRICS_FILE = "metrics.json"
EVAL_FILE = Path("eval") / "eval.json"
EVAL_METRICS = ("dice", "hd95")
SUMMARY_COLUMNS = ("best_epoch", "best_val_dice", "train_time_s")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _best_from_history(history: list[dict]) -> dict:
    val_dice = history_series(history, "val_dice")
    index = best_epoch_index(val_dice)
    if index is None:
        return {"epoch": None, "val_dice": None}
    return {"epoch": history[index].get("epoch"), "val_dice": float(val_dice[index])}


def load_run(path: str | os.PathLike) -> dict:
    """Read one run directory into ``{"name", "path", "config", "history", "best", "spec", "eval",
    "eval_cases"}``.

    ``name`` is the directory name; ``eval`` is the ``summary`` of ``eval/eval.json`` and
    ``eval_cases`` its per-case ``cases``, both None when the run has not been evaluated;
    ``best`` falls back to the history's highest val Dice.
    Raises DataError for a folder without ``metrics.json`` or with a malformed one.
    """
    run_dir = Path(path)
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise DataError(f"not a training run (no {METRICS_FILE}): {run_dir}")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_path}: expected a JSON object, got {type(metrics).__name__}")
    config = metrics.get("config")
    history = metrics.get("history")
    if not isinstance(config, dict):
        raise DataError(f"{metrics_path}: 'config' must be an object of hyper-parameters, got {config!r:.80}")
    if not isinstance(history, list) or not all(isinstance(entry, dict) for entry in history):
        raise DataError(f"{metrics_path}: 'history' must be a list of per-epoch objects, got {history!r:.80}")
    best = metrics.get("best")
    if not isinstance(best, dict):
        best = _best_from_history(history)

    summary = cases = None
    eval_path = run_dir / EVAL_FILE
    if eval_path.is_file():
        evaluation = _read_json(eval_path)
        summary = evaluation.get("summary") if isinstance(evaluation, dict) else None
        if not isinstance(summary, dict):
            raise DataError(f"{eval_path}: expected an object with a 'summary' object")
        cases = evaluation.get("cases")
    return {
        "name": run_dir.resolve().name,
        "path": run_dir,
        "config": config,
        "history": history,
        "best": best,
        "spec": metrics.get("spec"),
        "eval": summary,
        "eval_cases": cases,
    }


def _with_unique_names(runs: list[dict]) -> list[dict]:
    # Runs from different sweeps often share a folder name (run1, run1); lengthen the clashing
    # names with parent folders until every name is distinct.
    names = [run["name"] for run in runs]
    depth = 1
    while len(set(names)) < len(names) and depth < 16:
        depth += 1
        clashing = {name for name in names if names.count(name) > 1}
        names = [
            "/".join(Path(run["path"]).resolve().parts[-depth:]) if name in clashing else name
            for run, name in zip(runs, names)
        ]
    return [{**run, "name": name} for run, name in zip(runs, names)]


def _as_runs(runs: Sequence) -> list[dict]:
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    loaded = [dict(run) if isinstance(run, Mapping) else load_run(run) for run in runs]
    if not loaded:
        raise DataError("no runs to compare")
    return _with_unique_names(loaded)


def _canonical(config: Mapping, key: str) -> str:
    if key not in config:
        return "\0missing"
    return json.dumps(to_json_compatible(config[key]), sort_keys=True)


# Where a run was written and how many threads it used say nothing about the model.
NOT_HYPERPARAMETERS = frozenset({"params", "out", "threads"})


def differing_hyperparameters(runs: Sequence) -> list[str]:
    """Config keys (besides ``NOT_HYPERPARAMETERS``) whose values differ between runs, in config order.

    A key missing from some runs counts as differing. ``runs`` are run directories or
    :func:`load_run` results.
    """
    runs = _as_runs(runs)
    keys: list[str] = []
    for run in runs:
        keys += [key for key in run["config"] if key not in keys and key not in NOT_HYPERPARAMETERS]
    return [key for key in keys if len({_canonical(run["config"], key) for run in runs}) > 1]


def _task(config: Mapping) -> str | None:
    """The classes a run segments, as ``--labels`` gives them (``liver=1+2``), or None for a
    config that records none (a run from before labels were recorded)."""
    labels = config.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        return None
    return ", ".join(f"{name}=" + "+".join(str(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
                     for name, values in labels.items())


def task_difference(runs: Sequence) -> str | None:
    """One phrase naming the classes each group of runs segments when they are not the same
    (``liver=1 (runA); ggo=1, consolidation=2 (runB)``), else None: runs of different tasks
    (a liver and a lung-infection run) share the table, but their Dice columns do not measure
    the same thing. Runs that record no classes are left out of the check."""
    runs = _as_runs(runs)
    groups: dict[str, list[str]] = {}
    for run in runs:
        task = _task(run["config"])
        if task is not None:
            groups.setdefault(task, []).append(run["name"])
    if len(groups) < 2:
        return None
    return "; ".join(f"{task} ({', '.join(names)})" for task, names in groups.items())


def _train_seconds(history: list[dict]) -> float | None:
    seconds = history_series(history, "seconds")
    finite = seconds[np.isfinite(seconds)]
    return float(finite.sum()) if finite.size else None


def _eval_mean(summary: Mapping | None, class_name: str, metric: str):
    stats = (summary or {}).get(class_name)
    stats = stats.get(metric) if isinstance(stats, Mapping) else None
    return stats.get("mean") if isinstance(stats, Mapping) else None


VAL_CLASS_PREFIX = "val_dice_"


def _validation_classes(runs: list[dict]) -> list[str]:
    """Class names with their own validation Dice in the runs' histories (``val_dice_<class>``),
    when there are several; a one-class run's ``val_dice`` already is that class's Dice."""
    names: list[str] = []
    for run in runs:
        for entry in run["history"]:
            names += [key[len(VAL_CLASS_PREFIX):] for key in entry
                      if key.startswith(VAL_CLASS_PREFIX) and key[len(VAL_CLASS_PREFIX):] not in names]
    return names if len(names) > 1 else []


def _best_epoch_value(run: Mapping, key: str):
    epoch = run["best"].get("epoch")
    row = next((entry for entry in run["history"] if entry.get("epoch") == epoch), None)
    return None if row is None else row.get(key)


def compare_runs(paths: Sequence) -> tuple[list[dict], list[str]]:
    """Build a comparison table of training runs: ``(rows, columns)`` for :func:`format_table`.

    Columns: ``run``; the hyper-parameters that differ between the runs (identical ones are
    left out, so a single run shows none); ``params`` if any config records it;
    ``best_epoch``, ``best_val_dice``, ``train_time_s`` (sum of the epochs' seconds); with
    several classes, ``best_val_dice_<class>`` (each class's validation Dice at the best
    epoch); and, for runs with ``eval/eval.json``, ``eval_<class>_dice`` and ``eval_<class>_hd95``
    means.
    ``paths`` are run directories or :func:`load_run` results.
    """
    runs = _as_runs(paths)
    differing = differing_hyperparameters(runs)
    has_params = any("params" in run["config"] for run in runs)
    classes: list[str] = []
    for run in runs:
        classes += [name for name in (run["eval"] or {}) if name not in classes]
    eval_columns = {(name, metric): f"eval_{name}_{metric}" for name in classes for metric in EVAL_METRICS}
    val_columns = {name: f"best_val_dice_{name}" for name in _validation_classes(runs)}

    columns = ["run", *differing, *(["params"] if has_params else []), *SUMMARY_COLUMNS, *val_columns.values(),
               *eval_columns.values()]
    rows = []
    for run in runs:
        row = {"run": run["name"]}
        row.update({key: run["config"].get(key) for key in differing})
        if has_params:
            row["params"] = run["config"].get("params")
        row["best_epoch"] = run["best"].get("epoch")
        row["best_val_dice"] = run["best"].get("val_dice")
        row["train_time_s"] = _train_seconds(run["history"])
        for name, column in val_columns.items():
            row[column] = _best_epoch_value(run, VAL_CLASS_PREFIX + name)
        for (name, metric), column in eval_columns.items():
            row[column] = _eval_mean(run["eval"], name, metric)
        rows.append(row)
    return rows, columns


def _short_value(value) -> str:
    # Legends have little room: 0.001 rather than the table's fixed four decimals, [0, 255]
    # rather than [0.0000, 255.0000], liver=1 rather than {'liver': [1]}.
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return " ".join(f"{k}={'+'.join(map(_short_value, v)) if isinstance(v, (list, tuple)) else _short_value(v)}"
                        for k, v in value.items())
    return format_cell(value)


def _run_label(run: Mapping, differing: Sequence[str]) -> str:
    settings = ", ".join(f"{key}={_short_value(run['config'].get(key))}" for key in differing)
    return f"{run['name']} ({settings})" if settings else run["name"]


def _as_float(value) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def plot_comparison(path: str | os.PathLike, runs: Sequence) -> None:
    """Write a PNG comparing runs: all val-Dice curves on one axis, and a bar of best val Dice.

    Curve legends name each run with its differing hyper-parameters. ``runs`` are run
    directories or :func:`load_run` results. The file is written atomically.
    """
    runs = _as_runs(runs)
    differing = differing_hyperparameters(runs)
    figure = new_figure((13, 5))
    from matplotlib.ticker import MaxNLocator

    curve_ax, bar_ax = figure.subplots(1, 2, width_ratios=(2, 1))
    best_dice = np.array([_as_float(run["best"].get("val_dice")) for run in runs])
    colours = [f"C{index % 10}" for index in range(len(runs))]
    for run, colour in zip(runs, colours):
        history = run["history"]
        curve_ax.plot(
            history_series(history, "epoch"), history_series(history, "val_dice"),
            marker=".", color=colour, label=_run_label(run, differing),
        )
    curve_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve_ax.set_xlabel("epoch")
    curve_ax.set_ylabel("validation Dice")
    curve_ax.grid(alpha=0.3)
    # Under both panels, one run a line: inside the axis a legend of long labels covered the
    # curves and ran off the figure's left edge.
    figure.legend(*curve_ax.get_legend_handles_labels(), loc="outside lower center", ncols=1, fontsize=8,
                  frameon=False)

    positions = np.arange(len(runs))
    bar_ax.bar(positions, np.nan_to_num(best_dice), color=colours)
    for position, value in zip(positions, best_dice):
        if math.isfinite(value):
            bar_ax.annotate(f"{value:.4f}", (position, value), ha="center", va="bottom", fontsize=8)
    bar_ax.set_xticks(positions, [run["name"] for run in runs], rotation=30, ha="right", fontsize=8)
    bar_ax.set_ylabel("best validation Dice")
    finite = best_dice[np.isfinite(best_dice)]
    if finite.size:
        # Good runs all sit near the top of [0, 1]; zoom in so their differences are visible.
        bar_ax.set_ylim(max(0.0, float(finite.min()) - 0.05), min(1.0, float(finite.max()) + 0.02) + 0.01)
    save_png(path, figure)
