"""``edgeseg compare``: a side-by-side table (and optionally files and a plot) of training runs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.atomic import atomic_files, check_output_folder
from edgeseg.errors import DataError
from edgeseg.evaluate.compare import compare_runs, load_run, plot_comparison, task_difference
from edgeseg.evaluate.paired import (DEFAULT_RESAMPLES, MAX_RESAMPLES, MIN_RESAMPLES, few_cases_warning,
                                     paired_statistics, plot_paired)
from edgeseg.report.output import format_cell, format_table, write_csv, write_json

FILES = ("compare.csv", "compare.json", "compare.png")
PAIRED_FILES = ("compare_paired.png",)
PAIRED_COLUMNS = ("run", "class", "metric", "cases", "mean_diff", "ci95", "wilcoxon_p")


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write compare.csv, compare.json and compare.png (and with --paired compare_paired.png) "
         "into (created if missing).",
)
@click.option("--paired", is_flag=True,
              help="Add paired statistics of the runs' evaluations on the same cases: per class, the mean "
                   "per-case difference of Dice and HD95 against the reference, its 95% bootstrap interval and a "
                   "Wilcoxon signed-rank p-value (and compare_paired.png with --out).")
@click.option("--reference", default=None, metavar="NAME",
              help="With --paired: the run the others are compared with, by its name in the table (default: the "
                   "first run).")
@click.option("--common-cases", is_flag=True,
              help="With --paired: pair the cases every evaluation scored and leave out the others (default: "
                   "refuse evaluations of different cases).")
@click.option("--resamples", type=click.IntRange(MIN_RESAMPLES, MAX_RESAMPLES), default=None,
              help=f"With --paired: bootstrap resamples of the cases [default: {DEFAULT_RESAMPLES}].")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="With --paired: seed of the bootstrap resampling [default: 0].")
def command(runs: tuple[Path, ...], out_dir: Path | None, paired: bool, reference: str | None,
            common_cases: bool, resamples: int | None, seed: int | None) -> None:
    """Compare training runs side by side.

    Each RUN is a training run folder holding the trainer's metrics.json (and, if the run was
    evaluated, eval/eval.json). Prints one row per run with the hyper-parameters that differ
    between the runs, the best epoch and validation Dice, the training time, and evaluation
    Dice / HD95 means where available. With --paired, a second table compares the evaluations
    case by case against a reference run.
    """
    _check_paired_options(paired, reference=reference, common_cases=common_cases, resamples=resamples, seed=seed)
    _check_distinct(runs)
    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    loaded = [load_run(path) for path in runs]
    rows, columns = compare_runs(loaded)
    loaded = [{**run, "name": row["run"]} for run, row in zip(loaded, rows)]  # the table's unique names
    different = task_difference(loaded)
    if different and paired:
        raise DataError(f"--paired needs runs of the same classes; these segment different classes: {different}")
    statistics = None
    if paired:  # before anything is printed or written: a refusal leaves nothing behind
        statistics = paired_statistics(loaded, reference, common=common_cases,
                                       resamples=DEFAULT_RESAMPLES if resamples is None else resamples,
                                       seed=0 if seed is None else seed)
    if different:  # the table still helps (which run trained longer, on what); its Dice columns do not compare
        click.echo(f"edgeseg: warning: these runs segment different classes: {different}; their Dice and HD95 "
                   "columns are not comparable", err=True)
    few = few_cases_warning(statistics) if statistics is not None else None
    if few:
        click.echo(f"edgeseg: warning: {few}", err=True)
    click.echo(format_table(rows, columns))
    if statistics is not None:
        click.echo("\n" + paired_table(statistics))
    if out_dir is not None:
        files = FILES + (PAIRED_FILES if statistics is not None else ())
        # one set: a failed or concurrent compare never leaves one run's table beside another's plot
        with atomic_files(out_dir, files, drop=() if statistics is not None else PAIRED_FILES) as staged:
            write_csv(staged["compare.csv"], rows, columns)
            write_json(staged["compare.json"], {"columns": columns, "rows": rows,
                                                **({"different_classes": different} if different else {}),
                                                **({"paired": statistics} if statistics is not None else {})})
            plot_comparison(staged["compare.png"], loaded)
            if statistics is not None:
                plot_paired(staged["compare_paired.png"], statistics)
        click.echo(f"wrote {', '.join(files)} to {out_dir}", err=True)


def paired_table(statistics: dict) -> str:
    """The printed form of :func:`edgeseg.evaluate.paired.paired_statistics`: two heading lines
    saying what was compared and how, then one row per run, class and metric."""
    dropped = statistics["dropped"]
    left = (f"; --common-cases left out {dropped} not scored by every run (e.g. {statistics['dropped_cases'][0]})"
            if dropped else "")
    heading = (f"paired against {statistics['reference']}: {statistics['cases']} cases{left}\n"
               "mean_diff = run - reference per case (Dice: > 0 is better; HD95: < 0 is better, over the cases where "
               f"both define it); ci95: percentile bootstrap over cases, {statistics['resamples']} resamples, seed "
               f"{statistics['seed']}; wilcoxon_p: two-sided signed-rank over the cases that differ (zero "
               "differences dropped)")
    rows = [{"run": r["run"], "class": r["class"], "metric": r["metric"], "cases": r["n"], "mean_diff": r["mean_diff"],
             "ci95": "-" if r["ci_low"] is None else f"[{format_cell(r['ci_low'])}, {format_cell(r['ci_high'])}]",
             "wilcoxon_p": r["wilcoxon_p"]} for r in statistics["rows"]]
    return heading + "\n" + format_table(rows, PAIRED_COLUMNS)


def _check_paired_options(paired: bool, **given) -> None:
    """A usage error for a paired-statistics option given without --paired: it would do nothing."""
    if paired:
        return
    for name, value in given.items():
        if value not in (None, False):
            raise click.UsageError(f"--{name.replace('_', '-')} applies to paired statistics; add --paired")


def _check_distinct(runs: tuple[Path, ...]) -> None:
    """DataError for a run folder given twice (also under another name or through a link)."""
    seen: dict[Path, Path] = {}
    for run in runs:
        resolved = run.resolve()
        if resolved in seen:
            also = "" if seen[resolved] == run else f" (as {seen[resolved]})"
            raise DataError(f"the run folder {run} is given twice{also}; name each run once")
        seen[resolved] = run
