"""``edgeseg evaluate``: Dice, IoU and HD95 of a checkpoint on labelled CT data."""

from __future__ import annotations

import click

from edgeseg.atomic import check_output_folder
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.cli.tta_option import tta_option
from edgeseg.errors import require


@click.command("evaluate")
@input_limit_options
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Labelled data in any format 'edgeseg train --data' accepts.")
@click.option("--split", type=click.Choice(["auto", "train", "val", "test", "all"], case_sensitive=False), default="auto", show_default=True,
              help="Which cases: the checkpoint's recorded split (auto: test, else val, when the data is the training data) or all.")
@click.option("--labels", default=None,
              help="Source label values of each of the model's classes, by class name, e.g. 'liver=5' (default: as trained).")
@click.option("--label-file", default=None, type=click.Path(dir_okay=False),
              help="Label map for a single-volume --data: NIfTI, NRRD or DICOM SEG.")
@click.option("--keep-largest/--no-keep-largest", default=None,
              help="Keep only the largest component per class and slice (default: as chosen on validation at training).")
@click.option("--postprocess-3d/--no-postprocess-3d", "volume_postprocess", default=None,
              help="Largest 3-D component for every class without a recorded 3-D choice / no 3-D filters "
                   "(default: as chosen on validation at training).")
@click.option("--intensity", default=None, help="What slice-folder pixels mean: 'hu-clipped:0,255' or 'window:LO,HI' "
                   "(default: what the run's training slices meant).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Folder for eval.json, the table and overlay PNGs.")
@click.option("--worst", default=4, show_default=True, type=click.IntRange(min=0),
              help="Overlay PNGs for this many worst cases.")
@click.option("--workers", default=None, type=click.IntRange(min=0), show_default="one per 4 cores, at most 4",
              help="Processes computing the cases' metrics (HD95 above all) while the next cases are predicted, "
                   "at most this many cases in flight (0: in the evaluating process, one case after another).")
@tta_option
@quiet_option
def command(checkpoint, data, split, labels, label_file, keep_largest, volume_postprocess, intensity, out, worst,
            workers, tta, quiet) -> None:
    """Evaluate CHECKPOINT per case and per class; prints a table, writes JSON and overlays."""
    require("torch", "train", "edgeseg evaluate")
    from edgeseg.evaluate.model_eval import evaluate_checkpoint
    from edgeseg.train.config import parse_labels

    if out is not None:
        check_output_folder(out, "--out")
    result = evaluate_checkpoint(
        checkpoint, data, split=split, labels=parse_labels(labels) if labels else None,
        intensity=intensity, label_file=label_file, keep_largest=keep_largest,
        volume_postprocess=volume_postprocess, out=out, worst=worst, progress=not quiet, tta=tta,
        workers=workers,  # None: default_workers()
    )
    click.echo(result["table"])
