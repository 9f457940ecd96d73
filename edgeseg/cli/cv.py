"""``edgeseg cv``: k-fold cross-validation, one ``edgeseg train --folds K --fold k`` run per fold.

Resumable: a fold whose ``last.pt`` already reached the epochs is only re-scored, a fold that
stopped part-way continues from its ``last.pt``. Takes every ``edgeseg train`` option.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeseg.cli import train as train_cli
from edgeseg.errors import EdgesegError, require


def _run(**opts) -> None:
    require("torch", "train", "edgeseg cv")
    from edgeseg.atomic import atomic_write_text, check_output_folder
    from edgeseg.cli.logs import configure_logging
    from edgeseg.evaluate.cross_validation import format_summary, score_fold, summarise_folds, write_fold_scores
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.train.loop import train

    if opts["folds"] < 2:
        raise EdgesegError(f"--folds must be >= 2 for cross-validation, got {opts['folds']}")
    recipe = None
    if opts["recipe"] is not None:
        from edgeseg.train.recipes import load_recipe

        recipe = load_recipe(opts["recipe"])
    root = Path(opts["out"])
    configs = [train_cli.config_from_options({**opts, "fold": k, "out": str(root / f"fold{k}")}, recipe,
                                             click.get_current_context()) for k in range(opts["folds"])]
    check_output_folder(str(root), "--out")
    configure_logging()
    scores = []
    for cfg in configs:
        last = Path(cfg.out) / "last.pt"
        done = int(read_checkpoint(last).get("epoch", 0)) if last.is_file() else 0
        if done < cfg.epochs:
            click.echo(f"fold {cfg.fold}: training from epoch {done + 1} to {cfg.epochs}")
            train(cfg, resume=done > 0, progress=not opts["quiet"])
        fold_scores = score_fold(last)
        write_fold_scores(Path(cfg.out), fold_scores)
        scores.append(fold_scores)
    summary = summarise_folds(scores)
    table = format_summary(summary)
    atomic_write_text(root / "cv.json", json.dumps({"config": configs[0].to_dict(), **summary}, indent=2) + "\n")
    atomic_write_text(root / "cv.txt", table + "\n")
    click.echo(table)


command = click.Command(
    "cv",
    callback=_run,
    params=[p for p in train_cli.command.params if p.name not in ("fold", "resume", "nproc")],
    help="k-fold cross-validation by case: train every fold (resumably) with the edgeseg train options, "
         "then score each fold's last.pt on its held-out cases (per-slice Dice: binary and per class) "
         "and write OUT/cv.json and OUT/cv.txt (mean and spread over folds).",
)
