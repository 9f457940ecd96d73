"""``edgeseg compare``: a side-by-side table (and optionally files and a plot) of training runs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.atomic import atomic_files, check_output_folder
from edgeseg.errors import DataError
from edgeseg.evaluate.compare import compare_runs, load_run, plot_comparison, task_difference
from edgeseg.report.output import format_table, write_csv, write_json

FILES = ("compare.csv", "compare.json", "compare.png")


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write compare.csv, compare.json and compare.png into (created if missing).",
)
def command(runs: tuple[Path, ...], out_dir: Path | None) -> None:
    """Compare training runs side by side.

    Each RUN is a training run folder holding the trainer's metrics.json (and, if the run was
    evaluated, eval/eval.json). Prints one row per run with the hyper-parameters that differ
    between the runs, the best epoch and validation Dice, the training time, and evaluation
    Dice / HD95 means where available.
    """
    _check_distinct(runs)
    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    loaded = [load_run(path) for path in runs]
    rows, columns = compare_runs(loaded)
    different = task_difference(loaded)
    if different:  # the table still helps (which run trained longer, on what); its Dice columns do not compare
        click.echo(f"edgeseg: warning: these runs segment different classes: {different}; their Dice and HD95 "
                   "columns are not comparable", err=True)
    click.echo(format_table(rows, columns))
    if out_dir is not None:
        # one set: a failed or concurrent compare never leaves one run's table beside another's plot
        with atomic_files(out_dir, FILES) as staged:
            write_csv(staged["compare.csv"], rows, columns)
            write_json(staged["compare.json"], {"columns": columns, "rows": rows,
                                                **({"different_classes": different} if different else {})})
            plot_comparison(staged["compare.png"], loaded)
        click.echo(f"wrote {', '.join(FILES)} to {out_dir}", err=True)


def _check_distinct(runs: tuple[Path, ...]) -> None:
    """DataError for a run folder given twice (also under another name or through a link)."""
    seen: dict[Path, Path] = {}
    for run in runs:
        resolved = run.resolve()
        if resolved in seen:
            also = "" if seen[resolved] == run else f" (as {seen[resolved]})"
            raise DataError(f"the run folder {run} is given twice{also}; name each run once")
        seen[resolved] = run
