"""Evaluate a checkpoint on labelled volumes at their own resolution, per case and per class."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_files, atomic_write_text, within
from edgeseg.data.case_stream import CaseReader, open_case_readers
from edgeseg.data.dataset_names import dataset_label_names, unnamed_classes
from edgeseg.data.open import check_source, run_read_options, same_data
from edgeseg.data.volume import Volume
from edgeseg.errors import DataError
from edgeseg.evaluate.case_scoring import EVAL_BATCH, OtherCase, score_cases
from edgeseg.metrics import summarise
from edgeseg.evaluate.overlay import save_overlay_grid
from edgeseg.runtime.overlay import display_window
from edgeseg.report.output import format_table, write_json
from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions

log = logging.getLogger("edgeseg.evaluate")


def select_cases(volumes: list[Volume], payload: dict[str, Any], split: str,
                 data: str | None = None) -> tuple[list[Volume], str]:
    """The volumes of ``split``; "auto" takes the recorded test (else val) cases if present, and
    only on the training data (``data``, when given, is the data these volumes were read from:
    on other data, same-named cases, such as every phantom's ``case_000``, are other cases, so
    "auto" takes them all, and "train", "val" or "test" is a DataError)."""
    chosen, used = select_case_ids([v.case_id for v in volumes], payload, split, data)
    return [v for v in volumes if v.case_id in chosen], used


def select_case_ids(ids: list[str], payload: dict[str, Any], split: str,
                    data: str | None = None) -> tuple[set[str], str]:
    """The case ids of ``split`` among ``ids`` (the cases of ``data``), as :func:`select_cases`
    chooses them, and the split used."""
    if split == "all":
        return set(ids), "all"
    recorded = payload.get("split") or {}
    trained_on = (payload.get("train_config") or {}).get("data")
    if data is not None and trained_on is not None and same_data(trained_on, data) is False:
        if split != "auto":
            raise DataError(f"--split {split} takes the run's {split} cases, and {data} is other data than the run "
                            f"was trained on ({trained_on}): its cases of the same names are other cases; "
                            f"use --split all (or auto)")
        log.warning("%s is not the data the checkpoint was trained on (%s): evaluating every case", data, trained_on)
        return set(ids), "all"
    if split == "auto":
        for name in ("test", "val"):
            chosen = set(recorded.get(name, [])) & set(ids)
            if chosen:
                return chosen, name
        return set(ids), "all"
    chosen = set(recorded.get(split, [])) & set(ids)
    if not chosen:
        raise DataError(f"none of the checkpoint's {split} cases are in this data; use --split all")
    return chosen, split


def _cases_of_split(readers: list[CaseReader], payload: dict[str, Any], split: str,
                    data: str) -> tuple[Iterator[Volume], int, str]:
    """(the volumes of ``split``, in data order, read one case at a time where the source
    allows it; how many; the split used)."""
    if any(reader.case_id is None for reader in readers):  # one reader of the whole source
        volumes, used = select_cases([v for reader in readers for v in reader.read()], payload, split, data=data)
        return _one_at_a_time([volumes]), len(volumes), used
    chosen, used = select_case_ids([reader.case_id for reader in readers], payload, split, data=data)
    wanted = [reader for reader in readers if reader.case_id in chosen]
    return _one_at_a_time(reader.read() for reader in wanted), len(wanted), used


def _one_at_a_time(groups: Iterable[list[Volume]]) -> Iterator[Volume]:
    # Handed over without a local name holding them, so a volume is freed once its scoring drops
    # it, before the next one is read.
    for volumes in groups:
        volumes.reverse()
        while volumes:
            yield volumes.pop()


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    split: str = "auto",
    labels: dict[str, list[int]] | None = None,
    intensity: str | None = None,
    label_file: str | Path | None = None,
    keep_largest: bool | None = None,
    volume_postprocess: bool | None = None,
    out: str | Path | None = None,
    worst: int = 4,
    progress: bool = True,
    tta: str = "none",
    workers: int | None = 0,
) -> dict[str, Any]:
    """Dice, IoU and HD95 per case and class for ``checkpoint`` on ``data``.

    Predictions are made at each volume's own resolution through the runtime's Segmenter with
    the in-memory torch runner (the deployed pre- and post-processing), Dice is pooled
    over each case's slices and averaged over cases; the mean per-slice Dice is reported too (of
    the one class; with several classes, of the merged "any class" mask and of each class).
    Post-processing follows the per-class choice recorded at training (made on validation
    Dice); ``keep_largest`` True / False replaces its per-slice part by the largest component
    of every class / none; ``volume_postprocess`` False drops its 3-D part, True gives every
    class without a recorded 3-D choice its largest 3-D component. False-positive
    slices (a class predicted on a slice that holds none of it) are counted per case and class.
    A slice folder is read as the run read its slices (its recorded intensity, unless
    ``intensity`` is given, case pattern and mask kind); volumes carry their own HU.
    ``tta`` mirrors at prediction (``edgeseg.runtime.tta``), recorded in the result.
    ``workers`` > 0 computes the cases' metrics in that many processes while the next cases are
    predicted (``edgeseg.evaluate.case_metrics``): the same result, in the same order; None takes
    the command's default (``default_workers()``), a negative number is an EdgesegError.
    With ``out``: eval.json, eval.txt and worst_cases.png (contours on the CT in the task's
    display window, one colour per class; cases ranked by their mean class Dice) are written.
    """
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    import torch

    from edgeseg.data.volume import cases_sha256
    from edgeseg.report.provenance import environment
    from edgeseg.runtime.manifest import sha256_file
    from edgeseg.runtime.segmenter import Segmenter

    from edgeseg.evaluate.case_metrics import worker_count

    workers = worker_count(workers)
    check_source(data, "--data")
    if out is not None:
        _check_out_apart(Path(out), data)
    # before loading: a training writing this checkpoint replaces it whole, so hash and weights
    # differ only if it is replaced between the two, not half-written
    checkpoint_sha256 = sha256_file(checkpoint) if Path(checkpoint).is_file() else None
    model, payload = load_model(checkpoint)
    spec = checkpoint_spec(payload)
    class_names = list(payload["class_names"])
    label_values = class_label_values(labels, payload)
    mismatched = unnamed_classes(label_values, dataset_label_names(data))
    if mismatched:
        # a warning, not a refusal: --labels may rename a class (tumour=2 on MSD's "cancer")
        log.warning("%s/dataset.json names the label values of the model's classes otherwise: %s; if this is data of "
                    "another task, its Dice and HD95 mean nothing (map the classes with --labels)",
                    data, "; ".join(mismatched))
    post = chosen_postprocess(payload, len(class_names), keep_largest, volume_postprocess)
    segmenter = Segmenter.from_module(model, spec, dict(enumerate(class_names)), post, max_batch=EVAL_BATCH, tta=tta)
    # A slice folder's mask value outside these classes is refused, as in training.
    values = sorted({v for vals in label_values.values() for v in vals})
    read_as = run_read_options(str(data), payload.get("train_config"), intensity)
    readers = open_case_readers(data, label_file=label_file, label_values=values, **read_as)
    volumes, count, used_split = _cases_of_split(readers, payload, split, str(data))
    score = (segmenter, spec, label_values, class_names, values, progress)
    try:
        cases, overlays, unclassed = score_cases(volumes, count, _recorded_hashes(payload, str(data), used_split), score,
                                               workers)
    except OtherCase as other:
        if split != "auto":
            raise DataError(f"--split {split} takes the run's {split} cases, and {other} of {data} is another case than "
                            "the run's of that name (its content hash differs): use --split all (or auto)") from None
        log.warning("%s of %s is another case than the run's of that name: evaluating every case", other, data)
        volumes, count, used_split = _cases_of_split(readers, payload, "all", str(data))
        cases, overlays, unclassed = score_cases(volumes, count, None, score, workers)
    if unclassed:
        mapping = ", ".join(f"{name}={'+'.join(map(str, vals))}" for name, vals in label_values.items())
        found = sorted({v for stray in unclassed.values() for v in stray})
        log.warning("the label maps of %d case(s) (%s) hold only label values %s, none of which is a class of the model "
                    "(%s): their truth is all background and their Dice 0 whatever the model does; map them with "
                    "--labels", len(unclassed), ", ".join(sorted(unclassed)[:3]), "+".join(map(str, found)), mapping)
    summary = summarise([c["metrics"] for c in cases])
    result = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256, "data": str(data),
        # the same content hashes training records per case, so the scored cases can be matched to it
        "data_sha256": cases_sha256({c["case_id"]: c["sha256"] for c in cases}),
        "environment": {**environment(), "threads": torch.get_num_threads()},
        "split": used_split, "spec_hash": spec.hash,
        "postprocess": post.to_dict(), "tta": segmenter.tta, "classes": class_names, "cases": cases, "summary": summary,
        "false_positive_slices": {name: sum(c["false_positive_slices"][name] for c in cases) for name in class_names[1:]},
        "slices_without_class": {name: sum(c["slices_without_class"][name] for c in cases) for name in class_names[1:]},
        "slice_dice_mean": float(np.mean([c["slice_dice_mean"] for c in cases])),
    }
    if len(class_names) > 2:
        result["slice_dice_by_class"] = {name: float(np.mean([c["slice_dice_by_class"][name] for c in cases]))
                                         for name in class_names[1:]}
    result["table"] = _table(cases, class_names, summary, result) + "\n" + _fp_line(result)
    if tta != "none":
        result["table"] += f"\ntest-time mirroring: {tta}"
    if out is not None:
        _write(Path(out), result, overlays, worst, display_window(spec.window))
    log.info("evaluated %d cases (%s split)", len(cases), used_split)
    return result


def _recorded_hashes(payload: dict[str, Any], data: str, used_split: str) -> dict[str, str] | None:
    """The run's content hash per case, to match the cases of a recorded split against where
    ``data`` may be other data (a folder at another path than the run's); None where there is
    nothing to check (every case, the run's own data, a checkpoint without case hashes)."""
    trained_on = (payload.get("train_config") or {}).get("data")
    if used_split == "all" or trained_on is None or same_data(trained_on, data):
        return None
    return ((payload.get("provenance") or {}).get("data") or {}).get("case_sha256") or None


def _check_out_apart(out: Path, data: str) -> None:
    """DataError for an ``out`` inside (or at) the data folder evaluated: the files written there
    would become part of the data (an overlay PNG among a slice folder's images, say)."""
    source = Path(data)
    if source.is_dir() and within(out, source):
        raise DataError(f"--out {out} is inside the data folder {source}; write the evaluation outside the data")


def class_label_values(labels: dict[str, list[int]] | None, payload: dict[str, Any]) -> dict[str, list[int]]:
    """The source label values of each of the checkpoint's classes, in class order: ``labels``
    (the values of another source) matched to the recorded class names by name, whatever their
    order; without ``labels``, the values recorded at training. A name the model does not have,
    or a class ``labels`` leaves out, is a DataError."""
    names = list(payload["class_names"])[1:]
    if not labels:
        return payload.get("label_values") or {name: [index] for index, name in enumerate(names, start=1)}
    classes = ", ".join(names)
    unknown = [name for name in labels if name not in names]
    if unknown:
        raise DataError(f"--labels names {', '.join(unknown)}, which the model does not predict; its classes are {classes}")
    missing = [name for name in names if name not in labels]
    if missing:
        raise DataError(f"--labels gives no values for {', '.join(missing)}; name every class of the model ({classes})")
    return {name: list(labels[name]) for name in names}


def chosen_postprocess(payload: dict[str, Any], num_classes: int, keep_largest: bool | None,
                       volume_postprocess: bool | None) -> PostprocessOptions:
    """The checkpoint's recorded post-processing, with the per-slice largest-component choice
    and / or the 3-D part overridden where asked."""
    post = PostprocessOptions.from_dict(payload.get("postprocess"), num_classes)
    classes = {c: post.classes.get(c, ClassPostprocess()) for c in range(1, num_classes)}
    if keep_largest is not None:
        classes = {c: replace(o, keep_largest=keep_largest) for c, o in classes.items()}
    if volume_postprocess is False:
        classes = {c: replace(o, keep_largest_3d=False, min_ml=0.0) for c, o in classes.items()}
    elif volume_postprocess:  # a class without a recorded 3-D choice keeps its largest 3-D component
        classes = {c: o if o.filters_volume else replace(o, keep_largest_3d=True) for c, o in classes.items()}
    return PostprocessOptions(post.resize, {c: o for c, o in classes.items() if o != ClassPostprocess()})


def _fp_line(result: dict) -> str:
    parts = [f"{name} {n} of {result['slices_without_class'][name]}" for name, n in result["false_positive_slices"].items()]
    return "false-positive slices (predicted, no true foreground): " + ", ".join(parts)


def _table(cases: list[dict], class_names: list[str], summary: dict, result: dict) -> str:
    rows, columns = [], ["case", "slices"]
    for name in class_names[1:]:
        columns += [f"{name} dice", f"{name} iou", f"{name} hd95"]
    for case in cases:
        row = {"case": case["case_id"], "slices": case["slices"]}
        for name in class_names[1:]:
            m = case["metrics"][name]
            row.update({f"{name} dice": m["dice"], f"{name} iou": m["iou"], f"{name} hd95": m["hd95"]})
        rows.append(row)
    mean = {"case": "mean", "slices": sum(c["slices"] for c in cases)}
    for name in class_names[1:]:
        for metric in ("dice", "iou", "hd95"):
            mean[f"{name} {metric}"] = summary[name][metric]["mean"]
    rows.append(mean)
    # The means are over fewer cases than the rows above them, or (Dice) count cases where the class
    # is in neither mask as 1: say how many, so they can be set beside a tool that drops those cases.
    undefined = [f"{name} {summary[name]['hd95_undefined']} of {len(cases)}" for name in class_names[1:]
                 if summary[name].get("hd95_undefined")]
    absent = [f"{name} {summary[name]['absent']} of {len(cases)}" for name in class_names[1:]
              if summary[name].get("absent")]
    note = (f"\nHD95 undefined (one mask empty), left out of the mean: {', '.join(undefined)} case(s)"
            if undefined else "")
    note += (f"\nclass in neither mask (Dice and IoU 1 in the mean, HD95 left out): {', '.join(absent)} case(s)"
             if absent else "")
    note += _undefined_slices_note(cases, class_names)
    units = sorted({c["hd95_unit"] for c in cases if "hd95_unit" in c})
    if units:
        note += f"\nHD95 in {' and '.join(units)}" + (" (slice images carry no pixel size)" if "pixels" in units else "")
    if len(class_names) == 2:
        return (format_table(rows, columns) + note
                + f"\nmean per-slice Dice ({class_names[1]}): {result['slice_dice_mean']:.4f}")
    by_class = ", ".join(f"{name} {value:.4f}" for name, value in result["slice_dice_by_class"].items())
    return (format_table(rows, columns) + note + f"\nmean per-slice Dice, any of {'/'.join(class_names[1:])}: "
            f"{result['slice_dice_mean']:.4f}; per class: {by_class}")


def _undefined_slices_note(cases: list[dict], class_names: list[str]) -> str:
    """The line saying how many slices each class's per-slice HD95 (slice folders) left out."""
    parts = []
    for name in class_names[1:]:
        counted = [c["metrics"][name] for c in cases if "hd95_slices" in c["metrics"][name]]
        undefined = sum(m["hd95_undefined_slices"] for m in counted)
        if undefined:
            parts.append(f"{name} {undefined} of {sum(m['hd95_slices'] for m in counted)}")
    return ("\nHD95 per slice undefined (one mask empty), left out of the case means: " + ", ".join(parts)
            + " slice(s) with the class") if parts else ""


def _write(out: Path, result: dict, overlays: list, worst: int, window: tuple[float, float]) -> None:
    """eval.json, eval.txt and worst_cases.png (the CT in the display ``window``) as one set
    (``atomic.atomic_files``), so a stopped or failed evaluation never leaves its files beside
    an earlier run's; an earlier overlay this run does not make is removed."""
    chosen = [item for _, item in sorted(overlays, key=lambda pair: pair[0])[: max(0, worst)]]
    names = ["eval.json", "eval.txt"] + (["worst_cases.png"] if chosen else [])
    with atomic_files(out, names, drop=[] if chosen else ["worst_cases.png"]) as staged:
        write_json(staged["eval.json"], {k: v for k, v in result.items() if k != "table"})
        atomic_write_text(staged["eval.txt"], result["table"] + "\n")
        if chosen:
            save_overlay_grid(staged["worst_cases.png"], chosen, window=window,
                              title="worst cases: truth (solid) vs prediction (dashed)")
