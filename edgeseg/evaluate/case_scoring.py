"""Score the cases of an evaluation one at a time: predict each, then compute its metrics, in this
process or (``workers`` > 0) in worker processes while the next cases are predicted
(:mod:`edgeseg.evaluate.case_metrics`). Either way the cases come out in the order they were read,
with the same figures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from edgeseg.data.volume import Volume, label_counts
from edgeseg.errors import DataError
from edgeseg.evaluate.case_metrics import MetricWorkers, case_metrics
from edgeseg.evaluate.overlay import OverlayItem
from edgeseg.progress import progress_bar

EVAL_BATCH = 16


class OtherCase(Exception):
    """A case of a recorded split whose content is not the run's case of that name."""


def score_cases(volumes: Iterable[Volume], count: int, hashes: dict[str, str] | None, score: tuple,
                workers: int = 0) -> tuple[list, list, dict]:
    """Score ``volumes`` one at a time: (cases, overlays, label values of cases with no class).
    With ``workers`` > 0 their metrics are computed in that many processes, at most ``workers``
    cases in flight. Raises OtherCase (naming it) for a case whose content hash is not ``hashes``'s."""
    segmenter, spec, label_values, class_names, values, progress = score
    cases, panels, unclassed = [], [], {}

    def complete(finished: list[tuple[int, dict[str, Any]]]) -> None:
        for slot, part in finished:
            cases[slot].update(part)
            panels[slot] = panel_overlay(panels[slot], [m["dice"] for m in part["metrics"].values()], class_names)
            bar.update()

    pool = MetricWorkers(workers) if workers > 0 else contextlib.nullcontext()
    with progress_bar(total=count, desc="evaluate", unit="case", shown=progress) as bar, pool:
        # not enumerate(): its cached result tuple would keep each volume alive while the next is read
        for vol in volumes:
            if hashes and vol.case_id in hashes and vol.content_sha256() != hashes[vol.case_id]:
                raise OtherCase(f"case {vol.case_id}")
            stray = values_in_no_class(vol, values)
            if stray:
                unclassed[vol.case_id] = stray
            case, panel, arrays = _predict_case(vol, segmenter, spec, label_values, class_names)
            # dropped before the next case is read: a data set's volumes are never held at once
            del vol
            slot = len(cases)
            cases.append(case)
            panels.append(panel)
            # the arrays are handed on without a name holding them here: a case's prediction is
            # freed once its metrics are computed
            if workers > 0:
                complete(pool.submit(slot, case["case_id"], *arrays.pop()))
            else:
                complete([(slot, case_metrics(*arrays.pop()))])
        if workers > 0:
            complete(pool.finish())
    return cases, panels, unclassed


def values_in_no_class(vol: Volume, values: list[int]) -> list[int]:
    """The label values of ``vol`` where it has foreground but none of ``values`` (those of the
    model's classes), so that all its truth would be background; else []. A file naming its
    segments is matched by name (``map_labels``) and left out."""
    if vol.label is None or vol.label_names:
        return []
    present = [int(v) for v in np.flatnonzero(label_counts(vol.label)) if v > 0]
    return present if present and not set(present) & set(values) else []


def _predict_case(vol: Volume, segmenter, spec, label_values: dict[str, list[int]],
                  class_names: list[str]) -> tuple[dict[str, Any], tuple, list[tuple]]:
    """The start of one case's result (what it is), its overlay panel without the scores, and
    (in a list, for the caller to pop) the arguments of :func:`case_metrics` for it."""
    from edgeseg.data.slice_set import check_window, volume_classes

    if vol.label is None:
        raise DataError(f"case {vol.case_id} ({vol.source}) has no label map to evaluate against")
    check_window(vol, spec)
    truth = volume_classes(vol, label_values)
    pred = segmenter.predict_volume(vol, batch_size=EVAL_BATCH)
    case = {"case_id": vol.case_id, "sha256": vol.content_sha256(), "slices": vol.num_slices,
            # slice images carry no pixel size: their distances are counted in pixels
            "hd95_unit": "mm" if vol.contiguous else "pixels"}
    return case, slice_panel(vol, pred, truth), [(pred, truth, class_names, vol.contiguous, vol.axes_mm)]


def slice_panel(vol: Volume, pred: np.ndarray, truth: np.ndarray) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """The slice of ``vol`` with the most target voxels, as (title, CT, truth, prediction) of its
    overlay panel, the case's scores not yet in the title."""
    k = int(np.argmax((truth > 0).sum(axis=(1, 2)) + (pred > 0).sum(axis=(1, 2))))
    # copies: a view of one slice would keep the case's whole volumes alive until the overlays are drawn
    return f"{vol.case_id} slice {vol.slice_ids[k]}", vol.hu[k].copy(), truth[k].copy(), pred[k].copy()


def panel_overlay(panel: tuple, dices: list[float], class_names: list[str]) -> tuple[float, OverlayItem]:
    """The overlay panel of :func:`slice_panel` with the case's Dice of each foreground class
    (``dices``) in its title, and the case's score (their mean) for ranking."""
    title, hu, truth, pred = panel
    # The Dice shown is the case's (what ranks it), not the drawn slice's: say so.
    score = float(np.mean(dices))
    if len(class_names) == 2:
        title += f"  case Dice {score:.3f}"
    else:
        title += "\ncase Dice " + "  ".join(f"{name} {d:.3f}" for name, d in zip(class_names[1:], dices))
    return score, OverlayItem(hu, truth, pred, title, tuple(class_names[1:]))
