"""Paired statistics of evaluations that scored the same cases.

Two models scored on the same test cases are compared case by case: for each class, the
difference ``run - reference`` of each case's Dice (and HD95 where both define it) is averaged,
given a percentile bootstrap confidence interval (cases resampled with replacement, the same
resampled cases for both runs, so the pairing is kept) and a two-sided Wilcoxon signed-rank
p-value. Cases are matched by case id, and a case scored on different content or truth in two
evaluations is refused: its differences would compare two images, not two models.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from edgeseg.errors import DataError

DEFAULT_RESAMPLES = 10_000
MIN_RESAMPLES = 1_000
MAX_RESAMPLES = 1_000_000
CONFIDENCE = 0.95
# Zero differences (both runs score a case alike) are dropped before ranking, Wilcoxon's own
# handling (scipy's zero_method="wilcox"). They are dropped here rather than by scipy: scipy's
# method="auto" counts them towards its switch to the normal approximation (above 50 values),
# which for 3 differing cases among 63 gives p = 0.083 where the exact test gives 0.25.
ZERO_METHOD = "wilcox"
PAIRED_METRICS = ("dice", "hd95")
# Resampled case indices are drawn in blocks of about this many, so memory stays bounded for
# many cases and resamples; blocks draw the same stream as one call would.
_BLOCK_ELEMENTS = 1 << 22


def case_records(run: Mapping) -> dict[str, dict]:
    """The evaluated cases of one :func:`edgeseg.evaluate.compare.load_run` result, by case id.

    Raises DataError for a run without an evaluation, a malformed ``cases`` list or a case id
    given twice.
    """
    name, cases = run["name"], run.get("eval_cases")
    if run.get("eval") is None:
        raise DataError(f"run {name} has no eval/eval.json; paired statistics need every run evaluated "
                        f"(edgeseg evaluate CHECKPOINT --data DATA --out {run.get('path', name)}/eval)")
    if not isinstance(cases, list) or not cases:
        raise DataError(f"run {name}: eval/eval.json has no per-case results ('cases' list) to pair")
    records: dict[str, dict] = {}
    for case in cases:
        if not isinstance(case, Mapping) or not isinstance(case.get("metrics"), Mapping) or "case_id" not in case:
            raise DataError(f"run {name}: eval/eval.json has a case without 'case_id' and 'metrics': {case!r:.80}")
        case_id = str(case["case_id"])
        if case_id in records:
            raise DataError(f"run {name}: eval/eval.json scores case {case_id} twice; case ids must be unique to pair")
        records[case_id] = dict(case)
    return records


def matched_case_ids(records: Sequence[dict[str, dict]], names: Sequence[str],
                     common: bool) -> tuple[list[str], list[str]]:
    """The case ids every evaluation scored, in the first one's order, and those dropped (sorted).

    Without ``common``, evaluations that did not all score the same cases raise DataError naming
    how many cases differ and one of them; with it, the intersection is used (DataError if empty).
    """
    every = set().union(*(set(r) for r in records))
    shared = set.intersection(*(set(r) for r in records))
    unshared = every - shared
    if unshared and not common:
        example = min(unshared)
        missing = [name for name, r in zip(names, records) if example not in r]
        raise DataError(f"the evaluations did not score the same cases: {len(unshared)} of {len(every)} case ids are "
                        f"not in every run (e.g. {example}, missing from {', '.join(missing)}); pass --common-cases "
                        "to pair the cases they share")
    if not shared:
        raise DataError(f"the evaluations share no case id ({len(every)} case ids in all); nothing to pair")
    order = [case_id for case_id in records[0] if case_id in shared]
    return order, sorted(unshared)


def _check_same_case(case_id: str, records: Sequence[dict[str, dict]], names: Sequence[str],
                     classes: Sequence[str]) -> None:
    # A case id names a file, not its content: a phantom of another seed, or the same folder
    # read with other --labels, gives the same ids and different truths.
    first = records[0][case_id]
    for name, record in zip(names[1:], records[1:]):
        case = record[case_id]
        if first.get("sha256") and case.get("sha256") and first["sha256"] != case["sha256"]:
            raise DataError(f"case {case_id} has other content in {name}'s evaluation than in {names[0]}'s "
                            f"(sha256 {case['sha256'][:12]} against {first['sha256'][:12]}); pair evaluations "
                            "of the same data")
        for cls in classes:
            truth = [r[case_id]["metrics"].get(cls, {}).get("truth_voxels") for r in (records[0], record)]
            if None not in truth and truth[0] != truth[1]:
                raise DataError(f"case {case_id}: the {cls} truth has {truth[1]} voxels in {name}'s evaluation and "
                                f"{truth[0]} in {names[0]}'s; they scored different label maps (other data or "
                                "--labels)")


def _value(case: Mapping, cls: str, metric: str) -> float:
    entry = case["metrics"].get(cls)
    if not isinstance(entry, Mapping):
        return math.nan
    if metric == "hd95" and entry.get("pred_voxels") == 0 and entry.get("truth_voxels") == 0:
        return math.nan  # the 0 of a class in neither mask measures no boundary (as in the summary)
    value = entry.get(metric)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        raise DataError(f"case {case.get('case_id')}: {cls} {metric} is not a number: {value!r:.40}") from None


def bootstrap_mean_ci(differences, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (one value per case).

    Each of ``resamples`` resamples draws ``n`` case indices with replacement from
    ``numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))`` (drawn in row blocks,
    the same stream); the interval runs between the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (``numpy.percentile``, linear) of the resampled means.
    """
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise DataError(f"bootstrap needs a non-empty 1-D array of finite differences, got shape {values.shape}")
    if not MIN_RESAMPLES <= resamples <= MAX_RESAMPLES:
        raise DataError(f"resamples must lie in {MIN_RESAMPLES}..{MAX_RESAMPLES}, got {resamples}")
    n = values.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // n)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def wilcoxon_p(differences) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of ``differences``: ``scipy.stats.wilcoxon`` on the
    non-zero differences (zeros dropped, as ``zero_method="wilcox"``), with scipy's
    ``method="auto"`` (exact up to 50 values without ties, else a permutation test or the normal
    approximation); None when every difference is 0, where the test has nothing to rank."""
    values = np.asarray(differences, dtype=np.float64)
    values = values[values != 0]
    if values.size == 0:
        return None
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        # scipy warns when it falls back to an approximation; the docs say when that happens
        warnings.simplefilter("ignore", UserWarning)
        return float(wilcoxon(values).pvalue)


def paired_statistics(runs: Sequence[Mapping], reference: str | None = None, common: bool = False,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Per-class paired differences of every run's evaluation against the reference run's.

    ``runs`` are :func:`edgeseg.evaluate.compare.load_run` results with distinct names;
    ``reference`` is one of those names (default: the first run). Returns ``{"reference",
    "cases", "dropped", "dropped_cases", "hd95_unit", "resamples", "seed", "confidence",
    "zero_method", "rows"}`` (``dropped``: cases not scored by every run, left out with
    ``common``; ``hd95_unit``: the cases' ``mm`` or ``pixels``, None if unrecorded); each row
    names the ``run``, ``class`` and ``metric`` and gives ``n`` (cases paired), ``left_out``
    (cases where the metric is undefined in either run), ``zero_differences`` (cases both runs
    score alike, left out of the Wilcoxon test), ``mean_diff`` (run - reference),
    ``ci_low`` / ``ci_high``, ``wilcoxon_p`` and the per-case ``differences``.
    """
    names = [run["name"] for run in runs]
    if len(runs) < 2:
        raise DataError("paired statistics need at least two evaluated runs")
    reference = names[0] if reference is None else reference
    if reference not in names:
        raise DataError(f"the reference {reference} names no run of this comparison; the runs are {', '.join(names)}")
    ordered = [runs[names.index(reference)], *(run for run in runs if run["name"] != reference)]
    names = [run["name"] for run in ordered]
    records = [case_records(run) for run in ordered]
    classes = _shared_classes(ordered)
    case_ids, dropped = matched_case_ids(records, names, common)
    for case_id in case_ids:
        _check_same_case(case_id, records, names, classes)
    rows = []
    for name, record in zip(names[1:], records[1:]):
        for cls in classes:
            for metric in PAIRED_METRICS:
                base = np.array([_value(records[0][c], cls, metric) for c in case_ids])
                other = np.array([_value(record[c], cls, metric) for c in case_ids])
                kept = np.isfinite(base) & np.isfinite(other)
                if metric == "dice" and not kept.all():
                    raise DataError(f"run {name} or {reference}: a {cls} Dice is missing or not finite in eval.json")
                row = {"run": name, "class": cls, "metric": metric, "n": int(kept.sum()),
                       "left_out": int((~kept).sum()), "zero_differences": 0, "mean_diff": None,
                       "ci_low": None, "ci_high": None, "wilcoxon_p": None, "differences": {}}
                if kept.any():
                    diff = other[kept] - base[kept]
                    low, high = bootstrap_mean_ci(diff, resamples, seed)
                    row.update(zero_differences=int(np.count_nonzero(diff == 0)), mean_diff=float(diff.mean()),
                               ci_low=low, ci_high=high, wilcoxon_p=wilcoxon_p(diff),
                               differences=dict(zip((c for c, k in zip(case_ids, kept) if k), diff.tolist())))
                rows.append(row)
    units = {records[0][c].get("hd95_unit") for c in case_ids}
    return {"reference": reference, "cases": len(case_ids), "dropped": len(dropped), "dropped_cases": dropped,
            "hd95_unit": units.pop() if len(units) == 1 else None, "resamples": resamples,
            "seed": seed, "confidence": CONFIDENCE, "zero_method": ZERO_METHOD, "rows": rows}


def _shared_classes(runs: Sequence[Mapping]) -> list[str]:
    classes = list(runs[0]["eval"])
    for run in runs[1:]:
        if set(run["eval"]) != set(classes):
            raise DataError(f"runs {runs[0]['name']} and {run['name']} were evaluated on different classes "
                            f"({', '.join(classes)} against {', '.join(run['eval'])}); paired statistics need the same")
    return classes


# Below this many cases a percentile bootstrap interval of a mean covers the true mean clearly
# less often than its nominal 95% (about 87% at 6 normal differences, 91% at 10).
FEW_CASES = 10


def few_cases_warning(statistics: Mapping) -> str | None:
    """One sentence warning that some differences of :func:`paired_statistics` rest on fewer
    than ``FEW_CASES`` cases, or None."""
    counts = [row["n"] for row in statistics["rows"] if row["n"]]
    fewest = min(counts, default=0)
    if not counts or fewest >= FEW_CASES:
        return None
    # the exact two-sided signed-rank p of n untied differences, all of one sign
    return (f"some differences are paired over only {fewest} case{'s' if fewest > 1 else ''}: with under "
            f"{FEW_CASES} the bootstrap interval covers the true mean difference less often than "
            f"{statistics['confidence']:.0%}, and an exact Wilcoxon p cannot fall below {2.0 / 2 ** fewest:.3g}")


METRIC_LABELS = {"dice": "Dice difference (run - reference; > 0 is better)",
                 "hd95": "HD95 difference{unit} (run - reference; < 0 is better)"}


def plot_paired(path, statistics: Mapping) -> None:
    """Write a PNG of :func:`paired_statistics`: one panel per metric, one line per run and
    class, one dot per case's difference, the mean with its bootstrap interval as a bar, and a
    line at 0 (no difference). The file is written atomically."""
    from edgeseg.report.output import new_figure, save_png

    metrics = [m for m in PAIRED_METRICS if any(r["metric"] == m and r["n"] for r in statistics["rows"])]
    rows_of = {m: [r for r in statistics["rows"] if r["metric"] == m and r["n"]] for m in metrics}
    height = 1.2 + 0.45 * max([len(rows) for rows in rows_of.values()] + [1])
    figure = new_figure((6.5 * max(1, len(metrics)), height))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(metrics)), squeeze=False)[0])
    # a fixed jitter: the same statistics give the same picture
    jitter = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics):
        rows = rows_of[metric]
        for position, row in enumerate(rows):
            values = np.array(list(row["differences"].values()))
            ax.scatter(values, position + jitter.uniform(-0.18, 0.18, values.size), s=12, alpha=0.6,
                       color=f"C{position % 10}", linewidths=0)
            ax.errorbar(row["mean_diff"], position, xerr=[[row["mean_diff"] - row["ci_low"]],
                                                          [row["ci_high"] - row["mean_diff"]]],
                        fmt="D", color="black", capsize=4, markersize=5, zorder=3)
        ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_yticks(range(len(rows)), [f"{r['run']}: {r['class']} (n={r['n']})" for r in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        unit = f" in {statistics['hd95_unit']}" if statistics.get("hd95_unit") else ""
        ax.set_xlabel(METRIC_LABELS[metric].format(unit=unit), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle(f"per-case differences against {statistics['reference']}; diamond and bar: mean and "
                    f"{statistics['confidence']:.0%} bootstrap interval", fontsize=9)
    save_png(path, figure)
