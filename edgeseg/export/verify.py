"""The parity gate: every artifact against the FP32 PyTorch model on real held-out slices.

For each artifact (and, for FP16, also the model run in real float16, see
:mod:`edgeseg.export.fp16`) the gate reports the max and 99th-percentile absolute logit
difference, the agreement of the argmax masks per foreground class and Dice against ground
truth where labels exist. A class's agreement is the Dice of the artifact's mask of that class
against the FP32 model's, pooled over the held-out slices, which are drawn so that every class
is on some of them (:func:`load_verify_set`). ``dice_drop`` is the worst class's drop, and that
class is named (``worst_class``): a degraded rare class is not averaged away by a large one. A
class's drop is 1 - agreement by default; with the "truth" gate metric it is the fall of that
class's Dice against the held-out labels (FP32's minus the artifact's).

The masks compared are the deployed ones: argmax, then the bundle's per-slice component
filters (keep-largest, minimum size), on both sides. A pooled Dice barely moves when a small
structure disappears, so the gate also looks slice by slice (:func:`structure_changes`): an
artifact must not take a class of at least ``structure_px`` pixels off a slice where the FP32
model finds it, nor put one on a slice where it does not. Limits: FP32 formats must give identical masks,
except at pixels where the FP32 model itself is undecided (top-two logit margin below
``FP32_MARGIN``, i.e. float rounding decides the class); FP16 and INT8 must keep ``dice_drop``
within their threshold, lose no structure and keep all logits finite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, EdgesegError
from edgeseg.export.profiles import STRUCTURE_PX
from edgeseg.kernels.components import ComponentRule, filter_components
from edgeseg.metrics import dice, mean_class_dice
from edgeseg.report.output import format_table
from edgeseg.spec import PreprocessSpec

FP32_MARGIN = 1e-4
# What the gate compares. 1: the network's argmax masks, pooled per class. 2: the masks after the
# bundle's per-slice component filters, with the slice-by-slice structure check.
GATE_VERSION = 2
COLUMNS = ["artifact", "run on", "max |d|", "p99 |d|", "mask Dice", "dice drop", "limit", "Dice GT", "Dice GT fp32", "pass"]


class ParityError(EdgesegError):
    """An artifact differs from the FP32 model by more than its precision allows.

    ``report`` is the gate's full report (every row, as parity.json would hold it) and
    ``calibration`` the INT8 calibration record, when there was one, so a caller can say what
    was refused and on what data although no bundle was written.
    """

    def __init__(self, message: str, report: dict | None = None, calibration: dict | None = None) -> None:
        super().__init__(message)
        self.report = report
        self.calibration = calibration


@dataclass
class VerifySet:
    """Held-out model-input slices with their labels at model resolution (None if unlabelled);
    ``slice_cases`` names the case of each slice and ``case_slices`` its slice number in that
    case (0-based, in the order the case's volume holds them); ``read_as`` how the data was read
    (its ``label_values`` and slice-folder options), which the export records for a gate without torch."""

    images: np.ndarray
    truth: np.ndarray | None
    source: str
    cases: list[str]
    slice_cases: list[str]
    case_slices: list[int]
    read_as: dict = field(default_factory=dict)


def load_verify_set(payload: dict, spec: PreprocessSpec, data: str | None, count: int,
                    intensity: str | None = None, slice_ids: list | None = None) -> VerifySet:
    """Up to ``count`` slices of ``data`` (default: the checkpoint's validation cases), chosen
    equally from each combination of classes present (so every class is checked; half with and
    half without target for one class) and evenly over intensity, like calibration slices.

    The cases are read one at a time, twice: once to describe every slice, once more (only
    those holding a chosen slice) to keep the chosen ones, so memory is one case, not the data
    set (other cases than the validation ones are not read at all). ``slice_ids`` ([case, slice
    number] pairs, as parity.json records them) takes those slices instead, DataError if one is not there."""
    # The readers need edgeseg[io]; imported here so the rest of this module (the tables and
    # verdicts `edgeseg inspect` shows) works on a bare runtime install.
    from edgeseg.data.case_stream import CaseVolumes, open_case_readers
    from edgeseg.data.open import parse_phantom_spec, recorded_slice_options
    from edgeseg.export.int8 import classes_present, stratify_slices

    train_config = payload.get("train_config") or {}
    if data is None:
        data = train_config.get("data")
        cases = (payload.get("split") or {}).get("val") or []
        if not data or not cases:
            raise DataError("the checkpoint records no validation split; pass --verify-data DATA")
        intensity = intensity or train_config.get("intensity")
        if parse_phantom_spec(str(data)) is None and not Path(data).exists():
            raise DataError(f"the checkpoint's training data {data} is not found (from {Path.cwd()}); "
                            f"pass --verify-data DATA")
        wanted = set(cases)
        missing = f"none of the checkpoint's validation cases {cases[:4]} are in {data}; pass --verify-data DATA"
        options = {"intensity": intensity, **recorded_slice_options(train_config)}
        volumes = CaseVolumes(open_case_readers(data, **options), lambda case_id: case_id in wanted)
    else:
        options = {"intensity": intensity}
        volumes = CaseVolumes(open_case_readers(data, intensity=intensity))
        missing = f"verification data {data} holds no slices"
    class_names = list(payload["class_names"])
    label_values = payload.get("label_values") or {n: [i] for i, n in enumerate(class_names) if i}
    case_ids, owner, classes, means, first = [], [], [], [], []
    labelled = True  # one unlabelled case: the slices are chosen by intensity alone
    for vol in volumes:
        labelled = labelled and vol.label is not None
        images, truth = _model_slices(vol, spec, label_values if vol.label is not None else None)
        first.append(len(owner))
        case_ids.append(vol.case_id)
        owner += [vol.case_id] * len(images)
        means += [float(images[i].mean()) for i in range(len(images))]
        classes += [None] * len(images) if truth is None else [classes_present(t) for t in truth]
        del vol, images, truth  # not held while the next case is read
    if not case_ids:
        raise DataError(missing)
    first.append(len(owner))
    numbers = [i - first[k] for k in range(len(case_ids)) for i in range(first[k], first[k + 1])]  # in its case
    where = {(case, n): i for i, (case, n) in enumerate(zip(owner, numbers))}
    lost = [f"case {case} slice {n}" for case, n in slice_ids or [] if (case, n) not in where]
    if lost:
        raise DataError(f"{data} does not hold the export's held-out {lost[0]} ({len(lost)} of {len(slice_ids)} missing)")
    chosen = (stratify_slices([(c if labelled else None, m) for c, m in zip(classes, means)], count)
              if slice_ids is None else sorted(where[case, n] for case, n in slice_ids))
    images, truths = [], []
    for n, vol in volumes.reread({np.searchsorted(first, i, side="right") - 1 for i in chosen}):
        picked = [i - first[n] for i in chosen if first[n] <= i < first[n + 1]]
        case_images, case_truth = _model_slices(vol, spec, label_values if labelled else None)
        images.append(case_images[picked])
        truths.append(None if case_truth is None else case_truth[picked])
        del vol, case_images, case_truth
    read_as = {"label_values": label_values, **{k: v for k, v in options.items() if v is not None}}
    return VerifySet(np.concatenate(images), np.concatenate(truths) if labelled else None, str(data), case_ids,
                     [owner[i] for i in chosen], [numbers[i] for i in chosen], read_as)


def _model_slices(vol, spec: PreprocessSpec, label_values: dict | None) -> tuple[np.ndarray, np.ndarray | None]:
    """One case's model input (Z, 1, h, w) and, with ``label_values``, its classes at model resolution."""
    from edgeseg.data.slice_set import check_window, preprocess_stack, volume_classes
    from edgeseg.kernels.reference import preprocess_labels

    check_window(vol, spec)
    images = preprocess_stack(vol.hu, spec)
    return images, None if label_values is None else preprocess_labels(volume_classes(vol, label_values), spec)


def class_agreement(mask: np.ndarray, ref_mask: np.ndarray, truth: np.ndarray | None,
                    num_classes: int) -> dict[int, float | None]:
    """For each foreground class: Dice of ``mask == c`` against ``ref_mask == c`` (N, H, W)
    pooled over all the held-out slices, so pixels the artifact adds on slices without the
    class count against it; None where the class is in neither ``truth``, ``ref_mask`` nor
    ``mask`` (nothing to judge it on)."""
    agreement: dict[int, float | None] = {}
    for c in range(1, int(num_classes)):
        artifact, reference = mask == c, ref_mask == c
        seen = reference.any() or artifact.any() or (truth is not None and bool((truth == c).any()))
        agreement[c] = dice(artifact, reference) if seen else None
    return agreement


def truth_drops(mask: np.ndarray, ref_mask: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float | None]:
    """For each foreground class: Dice(FP32 mask, truth) - Dice(artifact mask, truth), pooled over
    the held-out slices (positive: the artifact is less accurate); None where the truth has no
    pixel of the class (a Dice against nothing says nothing about accuracy)."""
    drops: dict[int, float | None] = {}
    for c in range(1, int(num_classes)):
        target = truth == c
        drops[c] = dice(ref_mask == c, target) - dice(mask == c, target) if target.any() else None
    return drops


def structure_changes(mask: np.ndarray, ref_mask: np.ndarray, truth: np.ndarray | None, num_classes: int,
                      min_pixels: int, metric: str = "agreement", class_names: Sequence[str] | None = None,
                      slice_cases: Sequence[str] | None = None, case_slices: Sequence[int] | None = None,
                      keep_largest: Collection[int] = (), volume_filtered: Collection[int] = ()) -> list[dict]:
    """Where an artifact changes whether a class is on a slice (N, H, W masks), class by class.

    On slice i, for class c, with "shared" meaning the FP32 mask ``ref_mask`` and the artifact's
    ``mask`` have a pixel of c in common: "erased" when FP32 has at least ``min_pixels`` pixels
    of c, nothing is shared and the artifact has fewer than ``min_pixels`` (the class left the
    slice); "invented" the other way round (the class came onto it); "moved" when both have at
    least ``min_pixels`` and share nothing. With the "truth" metric only changes in accuracy
    count as erased or invented: an erased structure must have met the labels and an invented
    one must miss them. ``min_pixels`` 0 turns the check off.

    Each change says whether it ``fails`` the gate: erased and invented ones do, and moved ones
    too, except for a class in ``keep_largest`` (its per-slice filter keeps one component, and
    the other of two near-equal ones is a tie of that filter, which the pooled Dice weighs). No
    change of a class in ``volume_filtered`` fails: its 3-D filters, which the gate's separate
    slices cannot apply, may remove what it sees. One dict per change: slice (in the held-out
    set), case and slice number in the case (from ``slice_cases``, ``case_slices``), class name,
    kind, both pixel counts and ``fails``.
    """
    if min_pixels <= 0:
        return []
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    found = []
    for c in range(1, int(num_classes)):
        ref, art = ref_mask == c, mask == c
        ref_px, art_px = ref.sum(axis=(1, 2)), art.sum(axis=(1, 2))
        apart = ~(ref & art).any(axis=(1, 2))
        ref_on, art_on = ref_px >= min_pixels, art_px >= min_pixels
        erased, invented, moved = apart & ref_on & ~art_on, apart & art_on & ~ref_on, apart & ref_on & art_on
        if metric == "truth" and truth is not None:
            target = truth == c
            erased &= (ref & target).any(axis=(1, 2))
            invented &= ~(art & target).any(axis=(1, 2))
        for kind, where in (("erased", erased), ("invented", invented), ("moved", moved)):
            fails = c not in volume_filtered and (kind != "moved" or c not in keep_largest)
            found += [{"slice": int(i), "case": None if slice_cases is None else str(slice_cases[i]),
                       "case_slice": None if case_slices is None else int(case_slices[i]),
                       "class": names[c], "kind": kind, "fp32_px": int(ref_px[i]), "artifact_px": int(art_px[i]),
                       "fails": fails} for i in np.flatnonzero(where)]
    return sorted(found, key=lambda f: (f["slice"], f["class"], f["kind"]))


def failing_changes(changes: list[dict]) -> list[dict]:
    """The structure changes that fail the gate (see :func:`structure_changes`)."""
    return [f for f in changes if f.get("fails", f["kind"] != "moved")]


def compare_logits(reference: np.ndarray, logits: np.ndarray, truth: np.ndarray | None, precision: str,
                   limit: float, class_names: list[str] | None = None, metric: str = "agreement", *,
                   rules: Mapping[int, ComponentRule] | None = None, structure_px: int = STRUCTURE_PX,
                   slice_cases: Sequence[str] | None = None, case_slices: Sequence[int] | None = None,
                   volume_filtered: Collection[int] = ()) -> dict:
    """The parity row of one artifact's ``logits`` against the FP32 ``reference`` logits.

    ``class_names`` (indexed by class, background first) name the classes in ``class_dice``
    and ``worst_class``; by default they are the class numbers as text. ``metric`` says what a
    class's drop is (``ExportSettings.gate_metric``): "agreement" (1 - Dice against the FP32
    mask) or "truth" (the fall of Dice against ``truth``); ``class_drop`` holds it per class.
    ``rules`` are the bundle's per-slice component filters at model resolution, applied to both
    masks before Dice and structures are compared; FP32 identity is judged on the network's
    masks, where the undecided pixels are known (one of them can tip a filter over a whole
    component). ``structure_px``, ``slice_cases``, ``case_slices`` and ``volume_filtered``
    (classes with 3-D filters) feed :func:`structure_changes` (``structure_changes`` in the row).
    """
    num_classes = reference.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names {names} for logits of {num_classes} classes")
    if metric == "truth" and truth is None:
        raise DataError("the truth gate metric needs labelled held-out slices; the verification data has no labels")
    finite = bool(np.isfinite(logits).all())
    big = float(np.finfo(np.float32).max)
    # Non-finite logits count as the largest float, so percentiles stay defined; finite says why.
    clean = np.nan_to_num(logits.astype(np.float64), nan=big, posinf=big, neginf=-big)
    diff = np.abs(clean - reference)
    ref_mask, mask = reference.argmax(axis=1).astype(np.uint8), clean.argmax(axis=1).astype(np.uint8)
    top2 = np.sort(reference, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > FP32_MARGIN
    raw_ref, raw_mask = ref_mask, mask
    raw_changed = raw_mask != raw_ref
    if rules:  # what the runtime delivers: the same component filters on both sides
        ref_mask, mask = filter_components(ref_mask, rules), filter_components(mask, rules)
    changed = mask != ref_mask
    per_class = class_agreement(mask, ref_mask, truth, num_classes)
    if metric == "truth":
        class_drop = truth_drops(mask, ref_mask, truth, num_classes)
    else:
        class_drop = {c: None if a is None else 1.0 - a for c, a in per_class.items()}
    changes = structure_changes(mask, ref_mask, truth, num_classes, structure_px, metric, names, slice_cases,
                                case_slices, {c for c, r in (rules or {}).items() if r.keep_largest}, volume_filtered)
    judged = {c: d for c, d in class_drop.items() if d is not None}
    worst = max(judged, key=judged.get) if judged else None
    drop = judged[worst] if judged else 0.0
    row = {"max_abs": float(diff.max()) if finite else float("inf"), "p99_abs": float(np.percentile(diff, 99)),
           "mask_dice": min((a for a in per_class.values() if a is not None), default=1.0),
           "gate_metric": metric, "dice_drop": drop, "limit": limit, "changed_pixels": int(changed.sum()),
           "class_dice": {names[c]: a for c, a in per_class.items()},
           "class_drop": {names[c]: d for c, d in class_drop.items()},
           "class_changed_decided_pixels": {names[c]: int((raw_changed & decided & ((raw_ref == c) | (raw_mask == c))).sum())
                                            for c in range(1, num_classes)},
           "worst_class": None if worst is None else names[worst],
           "changed_decided_pixels": int((raw_changed & decided).sum()), "finite": finite,
           "structure_px": int(structure_px), "structure_changes": changes,
           "dice_gt": None if truth is None else mean_class_dice(mask, truth, num_classes),
           "dice_gt_fp32": None if truth is None else mean_class_dice(ref_mask, truth, num_classes)}
    if precision == "fp32":
        row["passed"] = finite and row["changed_decided_pixels"] == 0
    else:
        row["passed"] = finite and drop <= limit + 1e-12 and not failing_changes(changes)
    return row


def measure_latency(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, warmup: int = 3,
                    runs: int = 15) -> float:
    """Median milliseconds of one ``infer(batch)`` call after ``warmup`` calls."""
    for _ in range(warmup):
        infer(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        infer(batch)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def parity_table(report: dict) -> str:
    """The parity report as an aligned text table, one row per check."""
    rows = [{"artifact": r["key"], "run on": r["run_on"], "max |d|": r["max_abs"], "p99 |d|": r["p99_abs"],
             "mask Dice": r["mask_dice"], "dice drop": r["dice_drop"],
             "limit": "identical" if r["precision"] == "fp32" else r["limit"], "Dice GT": r["dice_gt"],
             "Dice GT fp32": r["dice_gt_fp32"], "pass": "yes" if r["passed"] else "NO",
             "worst class": r.get("worst_class"), "against": r.get("reference") or report.get("reference")}
            for r in report["results"]]
    several = any(len(r.get("class_dice") or {}) > 1 for r in report["results"])
    # One class: the worst class is that class, and the table stays as it always was.
    columns = COLUMNS[:6] + ["worst class"] + COLUMNS[6:] if several else COLUMNS
    # rows scored against another reference than the report's (edgeseg gate without torch) say which
    columns = [*columns, "against"] if any(row["against"] != report.get("reference") for row in rows) else columns
    text = format_table(rows, columns)
    for r in report["results"]:
        if r.get("structure_changes"):
            text += f"\nstructures changed by {r['key']} on {r['run_on']}: {describe_structures(r['structure_changes'])}"
    for run in report.get("rescored") or []:  # rows edgeseg gate added after the export
        runners = "; ".join(f"{', '.join(names)} on {file}" for file, names in (run.get("runners") or {}).items())
        link = run.get("reference_link") or {}
        against = (f", against {run.get('reference')}: {link.get('file')}, which the export's gate passed against "
                   f"{link.get('against')}" if run.get("reference") not in (None, report.get("reference")) else "")
        text += (f"\nscored after the export by edgeseg gate: {runners} (at {run.get('at')}, "
                 f"{run.get('slices')} slices of {run.get('data')}{against})")
    for file, reasons in sorted((report.get("excluded") or {}).items()):
        for runner, why in sorted(reasons.items()):
            text += f"\nexcluded from auto: {runner} on {file} ({why})"
    latency = report.get("latency")
    if latency:
        text += (f"\nONNX Runtime CPU latency, batch {latency['batch']}, {latency['threads']} thread(s): "
                 f"fp32 {latency['onnx-fp32_ms']:.2f} ms, int8 {latency['onnx-int8_ms']:.2f} ms, "
                 f"int8/fp32 = {latency['ratio']:.2f}")
    if report.get("stages"):
        text += "\nstages: " + ", ".join(f"{s['name']} {s['seconds']:.1f} s / {s['peak_rss_mb']:.0f} MB"
                                         for s in report["stages"])
        text += f"; process peak {report['peak_rss_mb']:.0f} MB"
    return text


def failures(report: dict) -> list[str]:
    """One phrase per failed row, e.g. ``onnx-int8 on onnxruntime-cpu: dice drop 0.0312 > 0.01``."""
    out = []
    for r in report["results"]:
        if r["passed"]:
            continue
        if not r["finite"]:
            why = "non-finite logits (overflow)"
        elif r["precision"] == "fp32":
            why = f"{r['changed_decided_pixels']} mask pixels differ from FP32"
            per_class = r.get("class_changed_decided_pixels") or {}
            if len(per_class) > 1:  # a changed pixel counts for the class it left and the one it joined
                why += " (" + ", ".join(f"{name} {n}" for name, n in per_class.items()) + ")"
        else:
            reasons = []
            if r["dice_drop"] > r["limit"] + 1e-12:
                what = "Dice drop against truth" if r.get("gate_metric") == "truth" else "dice drop"
                reason = f"{what} {r['dice_drop']:.4f} > {r['limit']}"
                classes = r.get("class_drop") or {n: None if a is None else 1.0 - a
                                                  for n, a in (r.get("class_dice") or {}).items()}
                if len(classes) > 1:  # name the failing class, and what the others did
                    others = ", ".join(f"{name} {d:.4f}" for name, d in classes.items()
                                       if name != r["worst_class"] and d is not None)
                    reason = f"class {r['worst_class']} {reason}" + (f" (other classes' drops: {others})" if others else "")
                reasons.append(reason)
            lost = failing_changes(r.get("structure_changes") or [])
            if lost:
                reasons.append(describe_structures(lost))
            why = "; ".join(reasons)
        out.append(f"{r['key']} on {r['run_on']}: {why}")
    return out


def gate_label(version: int | None, structure_px: int | None) -> str:
    """A short name of the gate a bundle passed, e.g. ``v2 (16 px)``; ``v1`` for one exported
    before the gate compared deployed masks (its parity.json names no version)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 2:
        return "v1"
    return f"v{version} ({structure_px} px)"


def describe_structures(changes: list[dict], shown: int = 3) -> str:
    """One phrase for :func:`structure_changes`, e.g. ``erased liver on slice 7 (case 10070,
    FP32 67 px, artifact 0 px)``: the first ``shown`` of them and a count of the rest."""
    parts = []
    for f in changes[:shown]:
        case = "" if not f.get("case") else (f"case {f['case']}" + ("" if f.get("case_slice") is None
                                                                    else f" slice {f['case_slice']}") + ", ")
        parts.append(f"{f['kind']} {f['class']} on slice {f['slice']} ({case}FP32 {f['fp32_px']} px, "
                     f"artifact {f['artifact_px']} px)")
    more = f" and {len(changes) - shown} more" if len(changes) > shown else ""
    return ", ".join(parts) + more
