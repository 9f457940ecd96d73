"""k-fold cross-validation figures: per-slice Dice on each fold's held-out cases, then mean and
spread over the folds.

Each fold's model is scored with its last epoch's weights (``last.pt``) on the cases it never
trained on, at every slice's own resolution through the runtime's Segmenter, so no choice is
made on the held-out cases. Per slice, Dice is taken for the binary mask (any class > 0) and for
each class; a class absent from both the truth and the prediction of a slice scores 1 there, as
:func:`edgeseg.metrics.dice` defines it.

Training chooses per-class component filters on its validation cases (``choose_postprocess``),
and in a fold those are the held-out cases, so the plain figures use no filter. What the filters
are worth is estimated by cross-fitting: every per-slice candidate (``SLICE_CANDIDATES``) is
scored per class on each fold's unfiltered predictions, and fold k is scored again with, for
each class, the candidate that does best over the *other* folds' held-out slices
(:func:`crossfit_postprocess`), and the removed pixels given to the other class that gains most
from them there (``removed_to``), if one gains. No slice takes part in the choice it is scored
under. nnU-Net chooses its post-processing on the pooled cross-validation predictions and
reports them; this is the same choice without that selection bias.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError
from edgeseg.metrics import dice
from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES, ClassPostprocess, PostprocessOptions

FOLD_SCORES = "cv_scores.json"
EVAL_BATCH = 16
# No component filter on any class: the checkpoint's recorded choice was made on the held-out
# cases (they are the fold's validation cases), so using it would select on the test slices.
NO_FILTERS = {"keep_largest": False}


def per_slice_dice(pred: np.ndarray, truth: np.ndarray, class_names: list[str]) -> list[dict[str, float]]:
    """For each slice of (Z, Y, X) label maps: Dice of the binary mask (``"binary"``: any class
    > 0) and of each foreground class (keyed by its name)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise DataError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    rows = []
    for p, t in zip(pred, truth):
        row = {"binary": dice(p > 0, t > 0)}
        row.update({name: dice(p == c, t == c) for c, name in enumerate(class_names) if c > 0})
        rows.append(row)
    return rows


def score_fold(checkpoint: str | Path, progress: bool = False, postprocess: dict | None = None,
               tta: str = "none", workers: int | None = 0) -> dict[str, Any]:
    """Per-slice Dice of ``checkpoint`` on its own held-out (``test``) cases, read from the data
    and with the settings recorded at training.

    Without ``postprocess`` no component filter runs, and each slice row also holds
    :func:`candidate_dice`'s ``candidates`` and ``candidates_given``.
    With ``postprocess`` (a checkpoint's or manifest's ``postprocess``) the Segmenter applies it,
    as a bundle would. ``tta`` mirrors at prediction (``edgeseg.runtime.tta``). ``workers``:
    as :func:`score_volumes` (None: ``default_workers()``; a negative number is an EdgesegError).
    """
    from edgeseg.evaluate.case_metrics import worker_count
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    from edgeseg.runtime.segmenter import Segmenter

    workers = worker_count(workers)  # refused before the checkpoint is read
    model, payload = load_model(checkpoint)
    spec, class_names = checkpoint_spec(payload), list(payload["class_names"])
    volumes = held_out_volumes(checkpoint, payload)
    options = NO_FILTERS if postprocess is None else postprocess
    segmenter = Segmenter.from_module(model, spec, dict(enumerate(class_names)), options, max_batch=EVAL_BATCH,
                                      tta=tta)
    with segmenter:
        slices = score_volumes(segmenter, volumes, payload, progress, candidates=postprocess is None, workers=workers)
    return {**fold_record(checkpoint, payload, slices), "tta": segmenter.tta}


def held_out_volumes(checkpoint: str | Path, payload: dict[str, Any]) -> list:
    """The held-out (``test``) cases of a fold's checkpoint ``payload``, read from its training
    data as training read it (intensity, slice options, the label values it recorded)."""
    from edgeseg.data import open_dataset
    from edgeseg.data.open import recorded_slice_options

    cfg = payload.get("train_config") or {}
    held_out = set((payload.get("split") or {}).get("test") or [])
    if not held_out:
        raise DataError(f"{checkpoint} records no held-out cases; train it with --folds")
    values = sorted({v for vals in fold_label_map(payload).values() for v in vals})
    return [v for v in open_dataset(cfg.get("data"), intensity=cfg.get("intensity"), label_values=values,
                                    **recorded_slice_options(cfg)) if v.case_id in held_out]


def fold_label_map(payload: dict[str, Any]) -> dict[str, list[int]]:
    """Class name -> source label values, as the checkpoint recorded them."""
    class_names = list(payload["class_names"])
    return payload.get("label_values") or {n: [i] for i, n in enumerate(class_names) if i}


def score_volumes(segmenter, volumes: list, payload: dict[str, Any], progress: bool = False,
                  candidates: bool = False, workers: int = 0) -> list[dict[str, Any]]:
    """Segment each held-out volume with ``segmenter`` (any runner) and return one row per
    slice: case, slice id and :func:`per_slice_dice` against the volume's labels; with
    ``candidates``, also :func:`candidate_dice` of the segmenter's output. With ``workers`` > 0
    the rows of each volume are computed in that many processes while the next volumes are
    predicted, at most ``workers`` volumes in flight (``edgeseg.evaluate.case_metrics``, as
    ``edgeseg evaluate --workers``): the same rows, in the same order."""
    import contextlib

    from edgeseg.data.slice_set import check_window, volume_classes
    from edgeseg.evaluate.case_metrics import MetricWorkers

    class_names, label_map = list(payload["class_names"]), fold_label_map(payload)
    done: dict[int, list[dict[str, Any]]] = {}
    cases: list[tuple[str, list]] = []
    with MetricWorkers(workers, compute=slice_rows) if workers > 0 else contextlib.nullcontext() as pool:
        for volume in volumes:
            check_window(volume, segmenter.spec)
            pred = segmenter.predict_volume(volume, batch_size=min(EVAL_BATCH, segmenter.max_batch),
                                            progress=progress)
            truth = volume_classes(volume, label_map)
            cases.append((volume.case_id, list(volume.slice_ids)))
            arguments = (class_names, segmenter.spec.size, candidates)
            if workers > 0:
                done.update(pool.submit(len(cases) - 1, volume.case_id, pred, truth, *arguments))
            else:
                done[len(cases) - 1] = slice_rows(pred, truth, *arguments)
        if workers > 0:
            done.update(pool.finish())
    return [{"case_id": case_id, "slice": sid, **row} for slot, (case_id, slice_ids) in enumerate(cases)
            for sid, row in zip(slice_ids, done[slot])]


def slice_rows(pred: np.ndarray, truth: np.ndarray, class_names: list[str], model_size: tuple[int, int],
               candidates: bool) -> list[dict[str, Any]]:
    """One volume's rows of :func:`score_volumes` (without case and slice id): :func:`per_slice_dice`
    of each slice, with ``candidates`` also :func:`candidate_dice`'s entries."""
    rows = per_slice_dice(pred, truth, class_names)
    if candidates:
        for row, scores in zip(rows, candidate_dice(pred, truth, class_names, model_size)):
            row.update(scores)
    return rows


def candidate_dice(pred: np.ndarray, truth: np.ndarray, class_names: list[str],
                   model_size: tuple[int, int]) -> list[dict[str, Any]]:
    """For each slice of unfiltered (Z, Y, X) labels ``pred``, two entries of its row:
    ``candidates``, per foreground class (by name), its Dice against ``truth`` after each of
    ``SLICE_CANDIDATES`` in turn, the filters scaled from ``model_size`` to the slice's size as
    the runtime scales them; and ``candidates_given``, per class and per other foreground class,
    the other class's Dice when the pixels each candidate removes are given to it
    (``removed_to``; the other class itself unfiltered)."""
    from edgeseg.kernels import filter_components

    pred = np.ascontiguousarray(pred, dtype=np.uint8)
    out: list[dict[str, Any]] = [{"candidates": {}, "candidates_given": {}} for _ in range(len(pred))]
    for c, name in enumerate(class_names):
        if c == 0:
            continue
        for keep, pixels in SLICE_CANDIDATES:
            for to, to_name in enumerate(class_names):
                if to == c:
                    continue
                option = ClassPostprocess(keep_largest=keep, min_pixels=pixels, removed_to=to)
                rules = PostprocessOptions(classes={c: option}).slice_rules(pred.shape[-2:], model_size)
                filtered = filter_components(pred, rules) if rules else pred
                for z, row in enumerate(out):
                    if to == 0:  # the class's own Dice does not depend on where its removed pixels go
                        row["candidates"].setdefault(name, []).append(dice(filtered[z] == c, truth[z] == c))
                    else:
                        given = row["candidates_given"].setdefault(name, {}).setdefault(to_name, [])
                        given.append(dice(filtered[z] == to, truth[z] == to))
    return out


def crossfit_postprocess(folds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each fold of ``folds`` (scored by :func:`score_fold` without ``postprocess``), the
    per-class filters chosen on the *other* folds: per class, the candidate of
    ``SLICE_CANDIDATES`` with the highest mean Dice over all the other folds' held-out slices
    (ties keep the earlier, lighter one); then, where a class is filtered, the other foreground
    class whose mean Dice there gains most from the removed pixels (``removed_to``), if one
    gains at all. Returns one ``postprocess`` dict per fold."""
    if len(folds) < 2:
        raise DataError("a cross-fitted choice needs at least two scored folds")
    names = list(folds[0]["classes"][1:])
    choices = []

    def mean(values) -> float:
        return float(np.mean(list(values)))

    for k in range(len(folds)):
        others = [s for j, fold in enumerate(folds) if j != k for s in fold["slices"]]
        chosen = {}
        for c, name in enumerate(names, start=1):
            means = [mean(s["candidates"][name][i] for s in others) for i in range(len(SLICE_CANDIDATES))]
            best = max(range(len(means)), key=lambda i: (means[i], -i))
            if not best:
                continue
            keep, pixels = SLICE_CANDIDATES[best]
            gains = {d: mean(s["candidates_given"][name][other][best] - s["candidates"][other][0] for s in others)
                     for d, other in enumerate(names, start=1) if d != c}
            to = max(sorted(gains), key=lambda d: gains[d], default=0)
            chosen[c] = ClassPostprocess(keep_largest=keep, min_pixels=pixels,
                                         removed_to=to if to and gains[to] > 0 else 0)
        choices.append(PostprocessOptions(classes=chosen).to_dict())
    return choices


def describe_postprocess(options: dict[str, Any], class_names: list[str]) -> str:
    """One line naming each filtered class's filter, or 'no filter'."""
    parts = []
    for c, name in enumerate(class_names):
        rule = options.get("classes", {}).get(str(c)) if c else None
        if rule:
            what = ["largest component"] if rule["keep_largest"] else []
            what += [f"components >= {rule['min_pixels']} px at model size"] if rule["min_pixels"] else []
            to = rule.get("removed_to", 0)
            what += [f"the rest given to {class_names[to]}"] if to else []
            parts.append(f"{name}: {', '.join(what)}")
    return "; ".join(parts) or "no filter"


def fold_record(checkpoint: str | Path, payload: dict[str, Any], slices: list[dict[str, Any]]) -> dict[str, Any]:
    """A fold's scores as :func:`summarise_folds` takes them."""
    cfg = payload.get("train_config") or {}
    return {"checkpoint": str(checkpoint), "epoch": payload.get("epoch"), "fold": cfg.get("fold"),
            "folds": cfg.get("folds"), "classes": list(payload["class_names"]), "slices": slices}


def summarise_folds(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean per-slice Dice of each fold, per metric, and their mean and sample standard
    deviation over the folds; ``pooled`` is the mean over all held-out slices together."""
    if not folds:
        raise DataError("no folds to summarise")
    metrics = ["binary", *folds[0]["classes"][1:]]
    per_fold = [{m: float(np.mean([s[m] for s in fold["slices"]])) for m in metrics} for fold in folds]
    every = [s for fold in folds for s in fold["slices"]]
    spread = {m: float(np.std([f[m] for f in per_fold], ddof=1)) if len(per_fold) > 1 else 0.0 for m in metrics}
    return {
        "metrics": metrics,
        "per_fold": [{"fold": fold["fold"], "slices": len(fold["slices"]), "epoch": fold["epoch"], **row}
                     for fold, row in zip(folds, per_fold)],
        "mean": {m: float(np.mean([f[m] for f in per_fold])) for m in metrics},
        "std": spread,
        "pooled": {m: float(np.mean([s[m] for s in every])) for m in metrics},
        "slices": len(every),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per fold, then mean +- std over folds and the pooled mean."""
    metrics = summary["metrics"]
    lines = ["fold  slices  epoch  " + "  ".join(f"{m:>13}" for m in metrics)]
    for row in summary["per_fold"]:
        lines.append(f"{row['fold']:>4}  {row['slices']:>6}  {row['epoch']!s:>5}  "
                     + "  ".join(f"{row[m]:>13.4f}" for m in metrics))
    lines.append("mean+-sample std over folds  " + "  ".join(f"{summary['mean'][m]:.4f}+-{summary['std'][m]:.4f}"
                                                       for m in metrics))
    lines.append(f"pooled over {summary['slices']} slices  " + "  ".join(f"{summary['pooled'][m]:.4f}" for m in metrics))
    return "\n".join(lines)


def tta_suffix(tta: str) -> str:
    """What a file name of scores under test-time mirroring ``tta`` adds: '' for none."""
    return "" if tta == "none" else f"-tta-{tta}"


def write_fold_scores(folder: Path, scores: dict[str, Any], tta: str = "none") -> None:
    """Keep a fold's per-slice scores next to its checkpoints (atomically): ``cv_scores.json``,
    ``cv_scores-tta-MODE.json`` under test-time mirroring."""
    name = FOLD_SCORES.replace(".json", tta_suffix(tta) + ".json")
    atomic_write_text(folder / name, json.dumps(scores, indent=2) + "\n")
