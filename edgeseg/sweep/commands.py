"""The `edgeseg` command lines that reproduce one sweep point by hand."""

from __future__ import annotations

import shlex
from pathlib import Path

from edgeseg.sweep.config import Point, SweepConfig

# recipe key -> `edgeseg train` flag
TRAIN_FLAGS = {"data": "--data", "labels": "--labels", "intensity": "--intensity", "epochs": "--epochs",
               "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay", "seed": "--seed",
               "val_fraction": "--val-fraction", "test_fraction": "--test-fraction", "augment_p": "--augment-p",
               "ema_epochs": "--ema", "amp": "--amp", "threads": "--threads", "recipe": "--recipe", "fit": "--fit",
               "loss": "--loss", "mask": "--mask", "case_pattern": "--case-pattern", "folds": "--folds", "fold": "--fold",
               "memory_format": "--memory-format"}
EXPORT_FLAGS = {"calib_method": "--calib-method", "calib_slices": "--calib-slices", "verify_slices": "--verify-slices",
                "max_batch": "--max-batch", "max_dice_drop_int8": "--max-dice-drop-int8", "gate_metric": "--gate-metric",
                "int8_scheme": "--int8-scheme", "structure_px": "--structure-px"}


def point_commands(sweep: SweepConfig, point: Point, folder: Path) -> list[str]:
    """Train, export and bench commands equivalent to what the sweep ran for ``point``.

    ``warmup_epochs`` has no `edgeseg train` flag; a recipe that sets it is noted in a comment.
    """
    recipe = dict(sweep.recipe)
    if point.seed is not None:  # a repeat of the variant with the grid's seed
        recipe["seed"] = point.seed
    train = ["edgeseg", "train", "--model", point.model, "--base", str(point.base), "--depth", str(point.depth),
             "--size", str(point.size), "--out", str(folder / "run")]
    for key, flag in TRAIN_FLAGS.items():
        if key in recipe:
            train += [flag, str(recipe[key])]
    for key, flag in (("window", "--window"), ("class_weights", "--class-weights")):
        if key in recipe:
            train += [flag, ",".join(str(v) for v in recipe[key])]
    if "regions" in recipe:  # checked by train_config: a list of lists of class numbers
        train += ["--regions", ",".join("+".join(str(c) for c in region) for region in recipe["regions"])]
    if recipe.get("augment") is False:
        train.append("--no-augment")
    if recipe.get("deterministic"):
        train.append("--deterministic")
    export = ["edgeseg", "export", str(folder / "run" / "best.pt"), "--out", str(folder / "bundle"), "--formats", "onnx",
              "--int8", "--calib", str(sweep.export.get("calib", recipe["data"]))]
    for key, flag in EXPORT_FLAGS.items():
        if key in sweep.export:
            export += [flag, str(sweep.export[key])]
    if "intensity" in recipe:
        export += ["--intensity", recipe["intensity"]]
    m = sweep.measure
    bench = ["edgeseg", "bench", str(folder / "bundle"), "--backend", "auto", "--batch", ",".join(map(str, m["batches"])),
             "--size", str(m["slice_size"]), "--runs", str(m["runs"]), "--warmup", str(m["warmup"]),
             "--threads", str(m["threads"]), "--no-cold-start"]
    lines = [shlex.join(train), shlex.join(export), shlex.join(bench)]
    if "warmup_epochs" in recipe:
        lines[0] += f"  # recipe warmup_epochs={recipe['warmup_epochs']} (no flag; set in TrainConfig)"
    return lines
