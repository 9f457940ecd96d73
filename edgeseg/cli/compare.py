"""``edgeseg compare``: a side-by-side table (and optionally files and a plot) of training runs."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.atomic import check_output_folder
from edgeseg.evaluate.compare import compare_runs, load_run, plot_comparison
from edgeseg.report.output import format_table, write_csv, write_json


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
    if out_dir is not None:
        check_output_folder(out_dir, "--out")
    loaded = [load_run(path) for path in runs]
    rows, columns = compare_runs(loaded)
    click.echo(format_table(rows, columns))
    if out_dir is not None:
        write_csv(out_dir / "compare.csv", rows, columns)
        write_json(out_dir / "compare.json", {"columns": columns, "rows": rows})
        plot_comparison(out_dir / "compare.png", loaded)
        click.echo(f"wrote compare.csv, compare.json, compare.png to {out_dir}", err=True)
