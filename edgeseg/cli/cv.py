"""``edgeseg cv``: k-fold cross-validation, one ``edgeseg train --folds K --fold k`` run per fold.

Resumable: a fold whose ``last.pt`` already reached the epochs is only re-scored, a fold that
stopped part-way continues from its ``last.pt``. Takes every ``edgeseg train`` option. With
``--int8`` each fold is then exported (``edgeseg.export.fold_export``) and its bundle scored
(``edgeseg.evaluate.cv_runtime``); exports and scores already written are read back.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import click

from edgeseg.cli import train as train_cli
from edgeseg.cli.tta_option import tta_parameter
from edgeseg.errors import EdgesegError, require

INT8_OPTIONS = [
    click.Option(["--int8/--no-int8"], default=False, show_default=True,
                 help="After training, export each fold's last.pt (FP32 ONNX + INT8 calibrated on the fold's training "
                      "cases, through the parity gate) and score the runtime FP32 and each INT8 backend the gate "
                      "accepted on the fold's held-out cases."),
    click.Option(["--trained-only"], is_flag=True,
                 help="Train nothing: score (and export) only the folds whose last.pt reached --epochs and write "
                      "OUT/cv-trained-only.json/.txt naming the folds left out (a run still training keeps its folds)."),
    click.Option(["--calib-method"], type=click.Choice(["minmax", "entropy", "percentile"], case_sensitive=False), default="entropy",
                 show_default=True, help="INT8 calibration method (as edgeseg export)."),
    click.Option(["--calib-slices"], type=click.IntRange(min=1), default=64, show_default=True,
                 help="Calibration slices drawn, stratified, from each fold's training cases."),
    click.Option(["--max-dice-drop-int8"], type=click.FloatRange(0.0, 1.0), default=0.01, show_default=True,
                 help="Largest drop of the worst class the gate allows (as edgeseg export)."),
    click.Option(["--gate-metric"], type=click.Choice(["agreement", "truth"], case_sensitive=False), default="agreement", show_default=True,
                 help="What the gate's drop is (as edgeseg export): 1 - Dice against the FP32 mask, or the fall of "
                      "Dice against the held-out labels."),
    click.Option(["--int8-scheme"], type=click.Choice(["cpu", "tensorrt"], case_sensitive=False), default="cpu", show_default=True,
                 help="How the INT8 graph quantises activations (as edgeseg export)."),
]
# --workers is train's (DataLoader processes, as edgeseg train): the scoring's processes are their own option
SCORE_OPTIONS = [
    click.Option(["--metric-workers"], default=None, type=click.IntRange(min=0),
                 show_default="one per 4 cores, at most 4",
                 help="Processes computing each held-out case's per-slice Dice and filter candidates while the next "
                      "cases are predicted, at most this many cases in flight (0: in the scoring process, one case "
                      "after another; as edgeseg evaluate --workers)."),
]


def _run(**opts) -> None:
    from edgeseg.atomic import atomic_files, check_output_folder

    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("val_fraction", "test_fraction")
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        raise EdgesegError(f"{' and '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to cv: each fold "
                           "holds out its own group of cases")
    recipe = None
    if opts["recipe"] is not None:
        from edgeseg.train.recipes import load_recipe

        recipe = load_recipe(opts["recipe"])
    if opts["int8"]:
        _export_settings(opts)  # its settings refused now, not after every fold has trained
    root = Path(opts["out"])
    configs = [train_cli.config_from_options({**opts, "fold": k, "out": str(root / f"fold{k}")}, recipe,
                                             click.get_current_context()) for k in range(opts["folds"])]
    check_output_folder(str(root), "--out")
    train_cli.check_out_beside_data(str(root), configs[0].data)
    train_cli.check_data_openable(configs[0].data)
    # torch (a second or more to import) only once the settings are accepted, as in edgeseg train
    require("torch", "train", "edgeseg cv")
    if opts["int8"]:
        require("onnx", "export", "edgeseg cv --int8")
    from edgeseg.evaluate.cross_validation import (format_summary, score_fold, summarise_folds, tta_suffix,
                                                   write_fold_scores)
    from edgeseg.evaluate.cv_runtime import format_runtime
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.train.config import config_differences
    from edgeseg.train.loop import train

    scores, missing, tta = [], [], opts["tta"]
    for cfg in configs:
        last = Path(cfg.out) / "last.pt"
        payload = read_checkpoint(last) if last.is_file() else {}
        # a fold trained with other settings (or another fold count: another split) is not this
        # cross-validation's, and re-scoring it would report it under these settings
        changed = config_differences(payload.get("train_config"), cfg)
        if changed:
            raise EdgesegError(f"{cfg.out} holds a fold trained with other settings ({'; '.join(changed[:4])}); "
                               "give another --out, or the settings it was trained with")
        done = int(payload.get("epoch", 0))
        if done > cfg.epochs:  # scoring it would report a longer training under these settings
            raise EdgesegError(f"{cfg.out} holds a fold trained to {done} epochs, more than --epochs {cfg.epochs}; "
                               f"give --epochs {done} or more, or another --out")
        if done < cfg.epochs and opts["trained_only"]:
            click.echo(f"fold {cfg.fold}: at epoch {done} of {cfg.epochs}; left out (--trained-only)")
            missing.append(cfg.fold)
            continue
        if done < cfg.epochs:
            click.echo(f"fold {cfg.fold}: training from epoch {done + 1} to {cfg.epochs}")
            train(cfg, resume=done > 0, progress=not opts["quiet"])
        fold_scores = score_fold(last, tta=tta, workers=opts["metric_workers"])
        write_fold_scores(Path(cfg.out), fold_scores, tta)
        scores.append(fold_scores)
    if not scores:
        raise EdgesegError(f"no fold of {root} is trained to {configs[0].epochs} epochs; nothing to score (--trained-only)")
    configs = [cfg for cfg in configs if cfg.fold not in missing]
    summary = summarise_folds(scores)
    table = format_summary(summary)
    result = {"config": configs[0].to_dict(), "tta": tta, **summary}
    if tta != "none":
        table = f"test-time mirroring: {tta}\n" + table
    crossfit = _crossfit(configs, scores, tta, opts["metric_workers"]) if len(scores) > 1 else None
    if crossfit is not None:
        result["postprocess_crossfit"], text = crossfit["record"], crossfit["text"]
        table += "\n\n" + text
    if opts["int8"]:
        runtime, runtime_crossfit = _export_and_score(configs, scores, opts, crossfit)
        result["runtime"] = runtime
        table = "FP32 (PyTorch)\n" + table + "\n" + format_runtime(runtime, summary["metrics"], len(configs))
        if runtime_crossfit is not None:
            result["postprocess_crossfit"]["runtime"] = runtime_crossfit
            table += "\n" + format_runtime(runtime_crossfit, summary["metrics"], len(configs), gate=False,
                                           title="runtime (bundle) with the cross-fitted filters")
    # A partial result never takes the place of the full one.
    names = ["cv"]
    if missing:
        result["folds_missing"] = missing
        table += (f"\nONLY {len(scores)} of {len(missing) + len(scores)} folds: fold(s) {', '.join(map(str, missing))} "
                  f"not trained to {configs[0].epochs} epochs")
        names = ["cv-trained-only"]
    # cv.json holds the latest run without mirroring (a --tta run writes cv-tta-MODE.json instead);
    # a copy named by the export settings is never overwritten by a run with other settings (e.g.
    # --gate-metric truth after the default).
    base = names[0]
    names = [base + tta_suffix(tta)]
    if opts["int8"]:
        from edgeseg.export.fold_export import export_name

        names.append(f"{base}-{export_name(_export_settings(opts))}{tta_suffix(tta)}")
    # each table lands with its JSON (atomic_files): a stop or a full disk between them must not
    # leave this run's scores beside an earlier run's table
    with atomic_files(root, [f"{name}{suffix}" for name in names for suffix in (".json", ".txt")]) as staged:
        for name in names:
            staged[f"{name}.json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            staged[f"{name}.txt"].write_text(table + "\n", encoding="utf-8")
    click.echo(table)


def _export_settings(opts: dict):
    """The export settings of ``edgeseg cv --int8`` with these options."""
    from edgeseg.export.profiles import ExportSettings

    return ExportSettings(formats=("onnx",), int8=True).override(
        calib_method=opts["calib_method"], calib_slices=opts["calib_slices"],
        max_dice_drop={"int8": opts["max_dice_drop_int8"]}, gate_metric=opts["gate_metric"],
        int8_scheme=opts["int8_scheme"])


def _crossfit(configs: list, scores: list[dict], tta: str, workers: int | None) -> dict:
    """Score each fold again with the component filters chosen on the other folds: the choices,
    the fold scores, cv.json's ``postprocess_crossfit`` part and its table."""
    from edgeseg.evaluate.cross_validation import (crossfit_postprocess, describe_postprocess, format_summary,
                                                   score_fold, summarise_folds)

    choices = crossfit_postprocess(scores)
    names = scores[0]["classes"]
    filtered = [score_fold(Path(cfg.out) / "last.pt", postprocess=choice, tta=tta, workers=workers)
                for cfg, choice in zip(configs, choices)]
    summary = summarise_folds(filtered)
    lines = ["FP32 with per-slice component filters chosen, per class, on the other folds' held-out slices "
             "(cross-fitted; no slice takes part in the choice it is scored under)"]
    lines += [f"fold {cfg.fold}: {describe_postprocess(choice, names)}" for cfg, choice in zip(configs, choices)]
    record = {"choices": [{"fold": cfg.fold, "postprocess": choice} for cfg, choice in zip(configs, choices)], **summary}
    return {"choices": choices, "scores": filtered, "record": record,
            "text": "\n".join(lines) + "\n" + format_summary(summary)}


def _export_and_score(configs: list, scores: list[dict], opts: dict, crossfit: dict | None) -> tuple[dict, dict | None]:
    """Export each fold's last.pt (FP32 ONNX + INT8, one fold at a time), score the bundle's
    accepted backends on the held-out slices, without filters and, given ``crossfit``, with
    each fold's cross-fitted filters; returns cv.json's ``runtime`` part and its cross-fitted
    counterpart (None without ``crossfit``)."""
    from edgeseg.evaluate.cv_runtime import score_fold_bundle, summarise_runtime
    from edgeseg.export.fold_export import (EXPORT_RECORD, export_fold, export_folder, export_is_current, read_record,
                                            record_gate)
    from edgeseg.export.verify import describe_structures, failing_changes

    settings = _export_settings(opts)
    records, runtime, runtime_crossfit = [], [], []
    for k, cfg in enumerate(configs):
        folder = export_folder(cfg.out, settings)
        done, record_path = export_is_current(folder, settings), folder / EXPORT_RECORD
        if not done and record_path.is_file():
            click.echo(f"fold {cfg.fold}: {folder} was exported under parity gate "
                       f"{record_gate(read_record(record_path))}, not today's")
        click.echo(f"fold {cfg.fold}: {'reading' if done else 'exporting'} {folder} (FP32 ONNX + INT8, "
                   f"{settings.calib_method} calibration on the fold's training cases, gate on its held-out cases)")
        echo = (lambda text: None) if opts["quiet"] else click.echo
        record = export_fold(Path(cfg.out) / "last.pt", folder, settings, progress=not opts["quiet"], echo=echo)
        for row in record["gate"]:
            if row["backend"].endswith(":int8"):
                lost = failing_changes(row.get("structure_changes") or [])
                verdict = ("accepted" if row["passed"] else f"REFUSED (limit {row['limit']:g}"
                           + (f"; {describe_structures(lost)})" if lost else ")"))
                click.echo(f"fold {cfg.fold}: {row['backend']} {verdict}, worst class {row['worst_class']} "
                           f"drop {row['dice_drop']:.4f}")
        records.append(record)
        runtime.append(score_fold_bundle(Path(cfg.out) / "last.pt", folder, record, threads=opts["threads"],
                                         echo=click.echo, tta=opts["tta"]))
        if crossfit is not None:
            runtime_crossfit.append(score_fold_bundle(Path(cfg.out) / "last.pt", folder, record, threads=opts["threads"],
                                                      echo=click.echo, postprocess=crossfit["choices"][k],
                                                      tta=opts["tta"]))
    if crossfit is None:
        return summarise_runtime(scores, records, runtime), None
    return summarise_runtime(scores, records, runtime), summarise_runtime(crossfit["scores"], records, runtime_crossfit)


# cv's own --out and --folds: train's would send the folds into train's default run folder
# (runs/train) and show a default of 0 folds that cv refuses.
OWN_OPTIONS = {
    "out": click.Option(["--out"], default="runs/cv", show_default=True, type=click.Path(file_okay=False),
                        help="Cross-validation folder: OUT/fold0 .. foldK-1, OUT/cv.json and OUT/cv.txt."),
    "folds": click.Option(["--folds"], required=True, type=click.IntRange(min=2),
                          help="Number of folds K: the cases are dealt into K groups, each held out once."),
}
# Each fold holds out its own group of cases: these train options are refused (_run), so unlisted.
HIDDEN_OPTIONS = ("val_fraction", "test_fraction")


def _cv_parameter(param: click.Parameter) -> click.Parameter:
    """A train option as cv shows it: its own --out and --folds, the refused fractions unlisted."""
    if param.name in OWN_OPTIONS:
        return OWN_OPTIONS[param.name]
    if param.name in HIDDEN_OPTIONS:
        param = copy.copy(param)
        param.hidden = True
    return param


# train's options cv does not take: it sets the fold, continues by itself, and trains in one process
_NOT_CV_OPTIONS = ("fold", "resume", "overwrite", "nproc", "launcher")

command = click.Command(
    "cv",
    callback=_run,
    params=[_cv_parameter(p) for p in train_cli.command.params if p.name not in _NOT_CV_OPTIONS]
    + INT8_OPTIONS + SCORE_OPTIONS + [tta_parameter()],
    help="k-fold cross-validation by case: train every fold (resumably) with the edgeseg train options, "
         "then score each fold's last.pt on its held-out cases (per-slice Dice: binary and per class) "
         "and write OUT/cv.json and OUT/cv.txt (mean and spread over folds); with --int8 also the runtime "
         "FP32 and INT8 bundles' scores (OUT/foldK/int8-METHOD-SLICES-maxLIMIT), and a copy of both files "
         "named by those settings (OUT/cv-int8-....json/.txt) that a run with other settings leaves alone; "
         "--tta scores with test-time mirroring into files named ...-tta-MODE, leaving cv.json as it was.",
)
