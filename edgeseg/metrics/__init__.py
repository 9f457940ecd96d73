"""Segmentation quality metrics: Dice, IoU and the 95th-percentile Hausdorff distance (HD95).

Conventions, chosen so that a case where the model correctly finds nothing is not penalised
and a case where it misses everything is:

* Dice and IoU: both masks empty -> 1.0; exactly one empty -> 0.0.
* HD95: both empty -> 0.0; exactly one empty -> nan (a distance to nothing is undefined).
  Report writers emit that nan as JSON ``null``; :func:`summarise` leaves it out of the
  statistics and counts it as ``hd95_undefined``.

HD95 is defined as in MONAI's ``compute_hausdorff_distance(percentile=95)``: the directed
distance of A to B is the 95th percentile (linear interpolation) of the distances, in mm, from
each surface voxel of A to the nearest surface voxel of B, and HD95 is the larger of the two
directed values. The surface of a mask is the set of its voxels that an erosion with face
connectivity removes, as in MONAI and MedPy: a voxel with a face neighbour outside the mask or
outside the array (masks touching the array border have a surface there). A surface taken with
full connectivity would also count voxels exposed only through an edge or a corner; that adds
a ring of near-zero distances wherever the contour changes from slice to slice and lowered
HD95 by up to three 5 mm slices on organ-like masks, so it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edgeseg.errors import DataError
from edgeseg.metrics.surface_distance import surface_distances

SUMMARISED_METRICS = ("dice", "iou", "hd95")
"""The per-class metrics :func:`summarise` aggregates (voxel counts are not aggregated)."""
# Grid axes whose cosines are below this are orthogonal: distances use the exact distance transform.
ORTHOGONAL_COSINE = 1e-6


def _mask_pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise DataError(f"prediction and ground truth differ in shape: {pred.shape} vs {truth.shape}")
    if pred.ndim == 0:
        raise DataError("masks must be arrays with at least one axis, got scalars")
    return pred.astype(bool, copy=False), truth.astype(bool, copy=False)


def _spacing(ndim: int, spacing) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DataError(f"spacing must be {ndim} positive numbers (mm per axis), got {spacing!r}") from None
    if len(values) != ndim or not all(math.isfinite(v) and v > 0 for v in values):
        raise DataError(f"spacing must be {ndim} positive numbers (mm per axis), got {spacing!r}")
    return values


def dice(pred, truth) -> float:
    """Dice coefficient ``2|P∩T| / (|P|+|T|)`` of two masks of any (equal) shape.

    Non-zero values count as foreground. Both masks empty gives 1.0 (nothing to find, nothing
    found); exactly one empty gives 0.0.
    """
    p, t = _mask_pair(pred, truth)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def iou(pred, truth) -> float:
    """Intersection over union (Jaccard index) ``|P∩T| / |P∪T|`` of two masks of equal shape.

    Both masks empty gives 1.0, exactly one empty gives 0.0, as for :func:`dice`.
    """
    p, t = _mask_pair(pred, truth)
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union


def mean_class_dice(pred_labels, true_labels, num_classes: int) -> float:
    """Mean over the foreground classes 1..num_classes-1 of :func:`dice` of two label maps,
    each pooled over every element of the maps (a class absent from both counts as 1).

    The export gate scores an artifact's masks against the FP32 model's with it.
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    return float(np.mean([dice(pred_labels == c, true_labels == c) for c in range(1, int(num_classes))]))


def per_case_dice(pred_labels, true_labels, case_index, num_classes: int) -> list[float]:
    """For each foreground class: :func:`dice` pooled over each case's slices (``case_index``
    gives the case of each slice), averaged over the cases ("Dice per case", as LiTS reports it).

    Training validation scores its epochs and post-processing choice with it.
    """
    pred_labels, true_labels, case_index = np.asarray(pred_labels), np.asarray(true_labels), np.asarray(case_index)
    if not pred_labels.shape[:1] == true_labels.shape[:1] == case_index.shape:
        raise DataError(f"one case index per slice is needed: {pred_labels.shape[:1]} slices, "
                        f"{true_labels.shape[:1]} truths, {case_index.shape} case indices")
    cases = [case_index == i for i in np.unique(case_index)]
    return [float(np.mean([dice(pred_labels[k] == c, true_labels[k] == c) for k in cases]))
            for c in range(1, int(num_classes))]


def mean_slice_dice(pred_labels, true_labels, classes: Sequence[int]) -> float:
    """Mean over the slices of a (N, H, W) stack of :func:`dice` of the mask "label in
    ``classes``" (one class, or several merged: ``(1, 2)`` is the binary "any infection" mask).

    A slice where neither map holds the classes counts 1.0, as :func:`dice` defines it; this
    is the "mean per-slice Dice" lesion-segmentation papers report.
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape or pred_labels.ndim != 3 or len(pred_labels) == 0:
        raise DataError(f"mean_slice_dice needs two (N, H, W) stacks of equal shape, N >= 1, got "
                        f"{pred_labels.shape} and {true_labels.shape}")
    wanted = np.asarray(list(classes))
    if wanted.size == 0:
        raise DataError("mean_slice_dice needs at least one class")
    # One slice's masks at a time: masks of whole stacks cost two bytes a voxel, as much as
    # the int16 volume itself on a 600-slice case.
    return float(np.mean([dice(np.isin(p, wanted), np.isin(t, wanted)) for p, t in zip(pred_labels, true_labels)]))


def _axes(ndim: int, spacing, grid) -> tuple[tuple[float, ...] | None, np.ndarray | None]:
    """(sampling, None) for an orthogonal grid, (None, axes) for a sheared one."""
    if grid is None:
        return _spacing(ndim, spacing), None
    try:
        axes = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"grid must be a matrix with one column of mm per array axis, got {grid!r}") from None
    if axes.ndim != 2 or axes.shape[1] != ndim or axes.shape[0] < ndim or not np.isfinite(axes).all():
        raise DataError(f"grid must be a finite matrix with {ndim} columns (mm per step of each array axis), "
                        f"got shape {list(axes.shape)}")
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(lengths > 0) or np.linalg.matrix_rank(axes) < ndim:
        raise DataError(f"grid axes must be independent and non-zero, got {np.round(axes, 6).tolist()}")
    unit = axes / lengths
    if np.abs(unit.T @ unit - np.eye(ndim)).max() <= ORTHOGONAL_COSINE:
        return tuple(float(v) for v in lengths), None
    return None, axes


def hd95(pred, truth, spacing=None, grid=None) -> float:
    """95th-percentile symmetric Hausdorff distance between two masks, in mm.

    ``spacing`` gives the voxel size along each array axis (default 1 for every axis); masks
    may be 2-D or 3-D (any dimensionality works). ``grid``, instead of ``spacing``, is a matrix
    whose column k is the step in mm of array axis k (a Volume's ``axes_mm``): a sheared grid
    (a gantry-tilted CT) then has its distances measured between the voxel centres where they
    lie, not as if its slices were stacked squarely. The value is the larger of the two
    directed 95th percentiles of surface-to-surface distances, as in MONAI. Both masks empty
    -> 0.0; exactly one empty -> nan. Memory stays near the size of the surfaces where the masks'
    bounding box is large (:mod:`edgeseg.metrics.surface_distance`).
    """
    p, t = _mask_pair(pred, truth)
    sampling, axes = _axes(p.ndim, spacing, grid)
    has_pred, has_truth = bool(p.any()), bool(t.any())
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return math.nan
    steps = np.diag(sampling) if axes is None else axes
    pred_to_truth, truth_to_pred = surface_distances(p, t, steps, orthogonal=axes is None)
    return float(max(np.percentile(pred_to_truth, 95), np.percentile(truth_to_pred, 95)))


def _mean_slice_hd95(p: np.ndarray, t: np.ndarray, spacing, grid=None) -> tuple[float, int, int]:
    """(mean HD95 over the slices where it is defined, slices where either mask has the class,
    those of them where only one has it)."""
    # Slices where the class is absent from both masks say nothing about boundary quality and
    # would pull the mean towards 0, so only slices where either mask has the class count.
    if spacing is not None and len(spacing) == 3:
        spacing = tuple(spacing)[1:]
    if grid is not None:
        grid = np.asarray(grid, dtype=np.float64)[:, -2:]
    occupied = np.flatnonzero(p.any(axis=(1, 2)) | t.any(axis=(1, 2)))
    if occupied.size == 0:
        return 0.0, 0, 0
    values = [hd95(p[k], t[k], spacing, grid) for k in occupied]
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else math.nan), len(values), len(values) - len(finite)


def class_metrics(
    pred_labels, true_labels, num_classes: int, spacing=None, per_slice_hd: bool = False, grid=None
) -> dict[int, dict[str, float]]:
    """Dice, IoU, HD95 and voxel counts for each foreground class 1..num_classes-1 of one case.

    The label maps hold one case: a 3-D volume or a (N, H, W) stack of 2-D slices. Dice and IoU
    pool every voxel of the case ("Dice per case" as LiTS defines it). HD95 is computed on the
    whole array with ``spacing`` (mm per axis), unless ``per_slice_hd`` is set: then the input
    must be a (N, H, W) stack, HD95 is computed on each slice (with the last two entries of
    ``spacing``, if given) where either mask has the class, and the finite values are averaged;
    use this for stacks of unrelated 2-D slices, which are not contiguous volumes. Each class
    then also has ``hd95_slices`` (the slices where either mask has it) and
    ``hd95_undefined_slices`` (those where only one has it, left out of the mean). ``grid``
    (a Volume's ``axes_mm``) replaces ``spacing`` where the grid may be sheared (see
    :func:`hd95`). Returns
    ``{class: {"dice", "iou", "hd95", "pred_voxels", "truth_voxels"}}``.
    """
    pred_labels = np.asarray(pred_labels)
    true_labels = np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise DataError(f"predicted and true label maps differ in shape: {pred_labels.shape} vs {true_labels.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise DataError(f"num_classes must be an integer >= 2 (background + classes), got {num_classes!r}")
    for name, labels in (("predicted", pred_labels), ("true", true_labels)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise DataError(f"{name} labels must be integers, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"{name} labels must lie in 0..{num_classes - 1}, found values "
                f"{int(labels.min())}..{int(labels.max())}"
            )
    if per_slice_hd and pred_labels.ndim != 3:
        raise DataError(f"per_slice_hd needs a (N, H, W) stack of slices, got shape {pred_labels.shape}")
    if per_slice_hd and spacing is not None and len(spacing) not in (2, 3):
        raise DataError(f"per-slice spacing must have 2 or 3 entries, got {spacing!r}")

    results: dict[int, dict[str, float]] = {}
    for cls in range(1, int(num_classes)):
        p = pred_labels == cls
        t = true_labels == cls
        slices = _mean_slice_hd95(p, t, spacing, grid) if per_slice_hd else None
        results[cls] = {
            "dice": dice(p, t),
            "iou": iou(p, t),
            "hd95": slices[0] if slices else hd95(p, t, spacing, grid),
            "pred_voxels": int(np.count_nonzero(p)),
            "truth_voxels": int(np.count_nonzero(t)),
        }
        if slices:
            results[cls].update(hd95_slices=slices[1], hd95_undefined_slices=slices[2])
    return results


def _statistics(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "median": float(np.median(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "n": int(values.size),
    }


def _class_key(cls, class_names: Sequence[str] | None):
    if class_names is None:
        return cls
    index = int(cls)
    if not 0 <= index < len(class_names):
        raise DataError(f"class {cls} has no name: class_names has {len(class_names)} entries {list(class_names)}")
    return class_names[index]


def summarise(per_case, class_names: Sequence[str] | None = None) -> dict:
    """Aggregate :func:`class_metrics` results of several cases into per-class statistics.

    ``per_case`` is a mapping ``case_id -> class_metrics(...)`` or a sequence of such results.
    For each class and each of dice / iou / hd95 the result holds mean, std (population,
    ddof=0), median, min, max and ``n`` (values used); nan values (undefined HD95) are left
    out of the statistics, and ``hd95_undefined`` counts them. A case whose masks both lack the
    class (``pred_voxels`` and ``truth_voxels`` 0) keeps its Dice and IoU of 1 in their
    statistics but not its HD95 of 0, which says nothing about a boundary and would pull the
    mean towards 0 (MONAI's HD95 is nan there, and its mean skips it); ``absent`` counts these
    cases. ``cases`` counts the cases that report the class. With ``class_names`` (indexed by
    class id, e.g. ``["background", "liver"]``) the result is keyed by name instead of class id.
    """
    cases = list(per_case.values()) if isinstance(per_case, Mapping) else list(per_case)
    if not cases:
        raise DataError("no cases to summarise")
    classes = sorted({cls for case in cases for cls in case})
    summary: dict = {}
    for cls in classes:
        reported = [case[cls] for case in cases if cls in case]
        absent = [m.get("pred_voxels") == 0 and m.get("truth_voxels") == 0 for m in reported]
        entry: dict = {"cases": len(reported), "absent": sum(absent)}
        for metric in SUMMARISED_METRICS:
            kept = [m for m, gone in zip(reported, absent) if metric in m and not (gone and metric == "hd95")]
            values = np.array([float(m[metric]) for m in kept], dtype=np.float64)
            entry[metric] = _statistics(values[np.isfinite(values)])
            if metric == "hd95":
                entry["hd95_undefined"] = int(np.count_nonzero(~np.isfinite(values)))
        summary[_class_key(cls, class_names)] = entry
    return summary


def false_positive_slices(pred_labels, true_labels, num_classes: int) -> dict[int, int]:
    """For each foreground class, the slices of (Z, Y, X) ``pred_labels`` that show the class
    while the same slice of ``true_labels`` holds none of it: the stray detections on organ-free
    slices (heart, lung bases, pelvis) that a Dice pooled over the volume hides."""
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape or pred_labels.ndim != 3:
        raise DataError(f"predicted and true labels must be (Z, Y, X) of one shape, got "
                        f"{pred_labels.shape} and {true_labels.shape}")
    return {c: int(((pred_labels == c).any(axis=(1, 2)) & ~(true_labels == c).any(axis=(1, 2))).sum())
            for c in range(1, int(num_classes))}
