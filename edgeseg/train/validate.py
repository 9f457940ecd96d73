"""Validation during training: loss and per-case Dice at model resolution, one case at a time."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.atomic import name_failure
from edgeseg.metrics import dice
from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES
from edgeseg.train.distributed import ProcessPlace, gather_to_all


class CasePredictions:
    """Argmax labels of the validation cases, kept one array per case: in memory, or with a
    ``folder``, one ``.npy`` file per case there, so that validation and the post-processing
    choice hold one case at a time however many slices the validation cases have."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = None if folder is None else Path(folder)
        self._held: dict[int, np.ndarray] = {}

    @classmethod
    def split(cls, pred: np.ndarray, case_index: np.ndarray) -> "CasePredictions":
        """Labels of a whole validation set (N, h, w), cut by ``case_index``."""
        held = cls()
        for k in np.unique(case_index):
            held.put(int(k), pred[case_index == k])
        return held

    def put(self, k: int, labels: np.ndarray) -> None:
        if self.folder is None:
            self._held[k] = labels
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{k}.npy"
            try:
                np.save(path, labels)
            except OSError as exc:  # a full disk: say which file, whatever numpy said
                name_failure(exc, path)
                raise

    def get(self, k: int) -> np.ndarray:
        return self._held[k] if self.folder is None else np.load(self.folder / f"{k}.npy")

    def remove(self) -> None:
        """Delete the folder's files (scratch: they only serve the epoch that wrote them)."""
        self._held.clear()
        if self.folder is not None and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


class _Rows:
    """``images[rows]`` read batch by batch (``len`` and slicing, which predict_labels needs)."""

    def __init__(self, images, rows: np.ndarray) -> None:
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: slice) -> np.ndarray:
        return self.images[self.rows[item]]


@torch.no_grad()
def predict_labels(model, images, device, autocast: Callable, batch_size: int = 16, loss_fn=None, labels=None,
                   memory_format: torch.memory_format = torch.channels_last):
    """Argmax labels (N, h, w) for pre-processed images, and the mean loss when labels are given."""
    model.eval()
    preds, losses = [], []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device, memory_format=memory_format)
        with autocast():
            logits = model(x)
        logits = logits.float()
        preds.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
        if loss_fn is not None and labels is not None:
            y = torch.from_numpy(labels[start : start + batch_size]).long().to(device)
            losses.append(float(loss_fn(logits, y)) * len(x))
    mean_loss = sum(losses) / len(images) if losses else float("nan")
    return np.concatenate(preds), mean_loss


def _case_numbers(val_set) -> list[int]:
    return [int(k) for k in np.unique(val_set.case_index)]


def validate(model, val_set, num_classes: int, device, autocast: Callable, loss_fn,
             memory_format: torch.memory_format = torch.channels_last,
             keep: CasePredictions | None = None, between_cases: Callable[[], None] | None = None,
             place: ProcessPlace = ProcessPlace()) -> dict[str, Any]:
    """Loss and Dice on the validation slices, streamed case by case.

    Each case's images are read in batches and its labels whole (``val_set.case_labels``), and
    its predictions go to ``keep`` (in memory unless it has a folder), so memory holds one case.
    Dice is pooled over each case's slices, then averaged over cases ("Dice per case", as LiTS
    reports it), per foreground class; ``dice`` is the mean over classes; ``loss`` the mean over
    slices of each batch's loss (batches do not cross cases); ``per_case`` each case's Dice per
    class. ``pred`` is ``keep``, for :func:`choose_postprocess`. ``between_cases`` is called
    before each case (the training loop's stop check: a SIGTERM need not wait for the whole
    validation set).

    In several processes (``place``) each predicts its share of the cases (:func:`_share`), and
    keeps their predictions; the per-case results, not partial sums, are gathered, and every
    process reduces them in case order exactly as one process does, so the figures are the
    same bits. ``between_cases`` is then called once per round of ``world_size`` cases, on every
    process alike (it is a collective there).
    """
    keep = CasePredictions() if keep is None else keep
    cases, mine = _case_numbers(val_set), {}
    for first in range(0, len(cases), place.world_size):
        if between_cases is not None:
            between_cases()
        if first + place.rank >= len(cases):  # the last round has fewer cases than processes
            continue
        k = cases[first + place.rank]  # so the cases taken are _share's
        rows = np.flatnonzero(val_set.case_index == k)
        truth = val_set.case_labels(k)
        pred, loss = predict_labels(model, _Rows(val_set.images, rows), device, autocast, loss_fn=loss_fn,
                                    labels=truth, memory_format=memory_format)
        mine[k] = (_dice_per_class(pred, truth, num_classes), loss, len(rows))
        keep.put(k, pred)
    results = gather_to_all(mine, place)
    per_case, loss_sum, slices = [], 0.0, 0
    for k in cases:
        dice_k, loss, count = results[k]
        per_case.append(dice_k)
        loss_sum, slices = loss_sum + loss * count, slices + count
    per_class = [float(v) for v in np.mean(per_case, axis=0)]
    return {"loss": loss_sum / slices, "dice": float(np.mean(per_class)), "per_class": per_class,
            "per_case": dict(zip(cases, per_case)), "pred": keep}


def _share(cases: list[int], place: ProcessPlace) -> list[tuple[int, int]]:
    """(position, case) of the validation cases this process predicts and scores: every
    ``world_size``-th from its rank (none where there are fewer cases than processes)."""
    return [(i, k) for i, k in enumerate(cases) if i % place.world_size == place.rank]


def _dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> list[float]:
    return [dice(pred == c, truth == c) for c in range(1, num_classes)]


VOLUME_CANDIDATES_ML = (0.1, 1.0, 10.0)

# One candidate set of filters: (PostprocessOptions dict, the number of classes it is read with).
_Options = tuple[dict[str, Any], int]


def choose_postprocess(pred: CasePredictions | np.ndarray, val_set, num_classes: int,
                       voxel_ml: list[float] | None = None, place: ProcessPlace = ProcessPlace()) -> dict[str, Any]:
    """Per class, the component filters that raise validation Dice (pooled per case), as a
    checkpoint's ``postprocess`` (see ``edgeseg.runtime.postprocess_options``).

    Like nnU-Net, the choice is made on held-out data rather than assumed: a liver can show as
    two islands in one axial slice, and lesions are many. For each foreground class, per-slice
    filters (largest component, a minimum size) are tried first, then on top of the best of them
    3-D filters over each validation case's slices taken as one volume (largest 3-D component,
    and with ``voxel_ml``, one voxel's mL at model resolution per case, a minimum volume). A
    filter touches only its class's pixels, so each class is chosen on its own Dice.

    ``pred`` holds the predictions per case (:func:`validate`'s), or all of them (N, h, w) in
    ``val_set``'s slice order. Each pass reads one case at a time and scores every candidate of
    that pass on it. In several processes (``place``) every process calls this together, each
    scoring the cases it predicted; the per-case scores are gathered and summed in case order,
    so every process makes one process's choice.
    """
    from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions

    preds = pred if isinstance(pred, CasePredictions) else CasePredictions.split(np.asarray(pred), val_set.case_index)
    cases = _case_numbers(val_set)

    def scores(candidates: Sequence[_Options]) -> list[list[float]]:
        return _scores(preds, val_set, cases, candidates, num_classes, voxel_ml, place)

    def one(c: int, option: ClassPostprocess) -> _Options:
        return PostprocessOptions(classes={c: option}).to_dict(), c + 1

    foreground = range(1, num_classes)
    plain = scores([({}, num_classes)])[0]
    best = {c: (ClassPostprocess(), plain[c - 1]) for c in foreground}
    sliced = [(c, ClassPostprocess(keep_largest=keep, min_pixels=pixels))
              for c in foreground for keep, pixels in SLICE_CANDIDATES[1:]]
    _keep_better(best, sliced, scores([one(c, o) for c, o in sliced]))
    volume_options = [(True, 0.0)] + [(k, ml) for ml in (VOLUME_CANDIDATES_ML if voxel_ml else ()) for k in (False, True)]
    volume = [(c, ClassPostprocess(best[c][0].keep_largest, best[c][0].min_pixels, keep3d, ml))
              for c in foreground for keep3d, ml in volume_options]
    _keep_better(best, volume, scores([one(c, o) for c, o in volume]))
    chosen = {c: option for c, (option, _) in best.items() if option != ClassPostprocess()}
    chosen = _choose_removed_to(chosen, num_classes, lambda options: float(np.mean(scores([options])[0])))
    options = PostprocessOptions(classes=chosen).to_dict()
    final = scores([(options, num_classes)])[0]
    return {**options, "val_dice": float(np.mean(plain)), "val_dice_post": float(np.mean(final)),
            "val_dice_per_class": plain, "val_dice_post_per_class": final}


def _keep_better(best: dict, candidates: list, values: list[list[float]]) -> None:
    """In candidate order, a class's candidate replaces its best when its Dice is higher."""
    for (c, option), value in zip(candidates, values):
        if value[c - 1] > best[c][1]:
            best[c] = (option, value[c - 1])


def _scores(preds: CasePredictions, val_set, cases: list[int], candidates: Sequence[_Options], num_classes: int,
            voxel_ml, place: ProcessPlace) -> list[list[float]]:
    """For each candidate, per foreground class, Dice pooled per case averaged over the cases;
    one pass over this process's cases, each read once."""
    mine = {}
    for i, k in _share(cases, place):
        pred, truth = preds.get(k), val_set.case_labels(k)
        spacing = None if voxel_ml is None else (voxel_ml[i] * 1000.0, 1.0, 1.0)  # only the product counts
        mine[k] = [_dice_per_class(_apply(pred, options, read_with, spacing), truth, num_classes)
                   for options, read_with in candidates]
    per_case = gather_to_all(mine, place)
    totals = np.zeros((len(candidates), num_classes - 1))
    for k in cases:  # in case order, as one process adds them
        totals += np.asarray(per_case[k], dtype=np.float64).reshape(totals.shape)
    return (totals / len(cases)).tolist()


def validation_voxel_ml(volumes: list, spec) -> list[float] | None:
    """One voxel's millilitres at the model's input size for each validation volume, for the
    3-D minimum-volume candidates; None where some case is a stack of unrelated slices (a slice
    folder), whose spacing is a placeholder and whose slices do not form a volume. ``volumes``
    are Volumes or anything with ``spacing``, ``shape`` (Z, Y, X) and ``contiguous`` (a slice
    store's :class:`~edgeseg.data.store.CaseGeometry`)."""
    if not volumes or not all(getattr(v, "contiguous", False) for v in volumes):
        return None
    rows, cols = spec.size
    shapes = [tuple(v.shape) if hasattr(v, "shape") else v.hu.shape for v in volumes]
    return [float(v.spacing[0] * v.spacing[1] * shape[1] / rows * v.spacing[2] * shape[2] / cols) / 1000.0
            for v, shape in zip(volumes, shapes)]


def _choose_removed_to(chosen: dict, num_classes: int, value_of: Callable[[_Options], float]) -> dict:
    """Per filtered class, give the pixels its filters remove to the other foreground class that
    raises the mean Dice over classes, if one does (else they stay background). The filters
    themselves were chosen on their own class's Dice, which ``removed_to`` does not change."""
    from dataclasses import replace

    from edgeseg.runtime.postprocess_options import PostprocessOptions

    def value(options: dict) -> float:
        return value_of((PostprocessOptions(classes=options).to_dict(), num_classes))

    best_value = value(chosen) if chosen else 0.0
    for c in sorted(chosen):
        for d in range(1, num_classes):
            if d == c:
                continue
            trial = {**chosen, c: replace(chosen[c], removed_to=d)}
            trial_value = value(trial)
            if trial_value > best_value:
                chosen, best_value = trial, trial_value
    return chosen


def _apply(pred: np.ndarray, options: dict, num_classes: int, spacing) -> np.ndarray:
    """``options`` on one case's model-resolution predictions: per slice, then as one volume."""
    from edgeseg.kernels import filter_components
    from edgeseg.runtime.postprocess_options import PostprocessOptions

    parsed = PostprocessOptions.from_dict(options, num_classes)
    size = pred.shape[-2:]
    rules = parsed.slice_rules(size, size)
    out = filter_components(pred, rules) if rules else pred.copy()
    if parsed.filters_volume:
        out = filter_components(out, parsed.volume_rules(spacing), volume=True)
    return out
