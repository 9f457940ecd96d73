"""The in-plane field of view (FOV) of a model's training data, and the check of an input's FOV against it.

Every slice is resized to the model's fixed input size (PreprocessSpec ``size``), so what sets the
scale of the anatomy the network sees is not the pixel spacing but the field of view: rows x row
spacing in mm. A liver model trained on 350-450 mm abdomens sees a liver about a third of the
input wide; a 0.3 mm x 512 = 154 mm zoomed reconstruction fills the input with a part of it, and a
2 mm x 512 = 1 m scout-like image shrinks it to a tenth. Both are resized and segmented all the
same. A run therefore records the FOV range of its training cases (and their pixel-spacing range,
for information), the checkpoint keeps it, export writes it into the manifest (``training_fov``),
and the runtimes say so when an input's FOV lies outside it by more than :data:`FOV_FACTOR`.

A slice's FOV is its longer side, ``max(rows * row spacing, columns * column spacing)``: with
``fit = "pad"`` that side alone sets the scale (the slice is fitted into the square by it), and
CT slices are square at equal row and column spacing in nearly every reconstruction, where the
two sides are one number. The record is ``None`` where the spacing of some training case is not
known (a slice folder's PNG images, read with a placeholder spacing of 1 mm): a range of the
others would claim a scale the model was never limited to.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable

from edgeseg.errors import DataError, EdgesegError

#: the manifest's and the checkpoint's key of the record
RECORD_KEY = "training_fov"
#: how far (as a ratio) an input's FOV may lie outside the training range before the runtime speaks
FOV_FACTOR = 1.25
FOV_CHECK_ENV = "EDGESEG_FOV_CHECK"
FOV_CHECK_MODES = ("warn", "refuse", "off")
# The one wording of a malformed record, in both runtimes (csrc/runtime/training_fov.c).
MALFORMED = ('training_fov must be null or {"fov_mm": [low, high], "spacing_mm": [low, high], "cases": N} '
             'with finite 0 < low <= high and N a whole number >= 1')


@dataclass(frozen=True)
class TrainingFov:
    """The training cases' in-plane FOV range (longer side, mm), pixel-spacing range (mm) and count."""

    fov_mm: tuple[float, float]
    spacing_mm: tuple[float, float]
    cases: int

    def to_dict(self) -> dict[str, Any]:
        return {"fov_mm": list(self.fov_mm), "spacing_mm": list(self.spacing_mm), "cases": self.cases}

    def describe(self) -> str:
        """One phrase for ``inspect``: the FOV and spacing ranges and the number of cases."""
        return (f"FOV {self.fov_mm[0]:g}-{self.fov_mm[1]:g} mm (longer side), pixel spacing "
                f"{self.spacing_mm[0]:g}-{self.spacing_mm[1]:g} mm, over {self.cases} training case(s)")


def parse_training_fov(value: Any, error: type[EdgesegError] = DataError, where: str = "manifest") -> TrainingFov | None:
    """The record read from JSON (``None`` for null, as for a record not there); ``error`` naming
    ``where`` for anything else than the layout :data:`MALFORMED` gives. Keys besides the three are
    ignored, so a later edgeseg may add some without older ones refusing its bundles."""
    if value is None:
        return None
    ranges = [_range(value.get(key)) if isinstance(value, dict) else None for key in ("fov_mm", "spacing_mm")]
    cases = value.get("cases") if isinstance(value, dict) else None
    if None in ranges or not (isinstance(cases, int) and not isinstance(cases, bool) and 1 <= cases <= 10**15):
        raise error(f"{where} {MALFORMED}")
    return TrainingFov(fov_mm=ranges[0], spacing_mm=ranges[1], cases=cases)


def _range(pair: Any) -> tuple[float, float] | None:
    """A JSON ``[low, high]`` of finite numbers with 0 < low <= high, else None."""
    if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               for v in pair):
        return None
    try:
        low, high = float(pair[0]), float(pair[1])
    except OverflowError:  # an integer of hundreds of digits, which C reads as infinity
        return None
    return (low, high) if math.isfinite(low) and math.isfinite(high) and 0 < low <= high else None


def slice_fov(shape_yx: tuple[int, int], spacing_yx: tuple[float, float]) -> float:
    """A slice's FOV in mm: its longer side (see the module docstring)."""
    return max(shape_yx[0] * float(spacing_yx[0]), shape_yx[1] * float(spacing_yx[1]))


def training_fov(cases: Iterable[Any]) -> TrainingFov | None:
    """The record of ``cases`` (each with ``spacing`` (z, y, x) mm, ``shape`` (Z, Y, X) and
    ``contiguous``, as :class:`~edgeseg.data.store.CaseGeometry`), or None where there are none or
    one's spacing is not known (``contiguous`` false: a slice folder's images)."""
    cases = list(cases)
    if not cases or not all(case.contiguous for case in cases):
        return None
    fovs = [slice_fov(tuple(case.shape[1:]), tuple(case.spacing[1:])) for case in cases]
    spacings = [float(s) for case in cases for s in case.spacing[1:]]
    return TrainingFov(fov_mm=(round(min(fovs), 4), round(max(fovs), 4)),
                       spacing_mm=(round(min(spacings), 4), round(max(spacings), 4)), cases=len(cases))


def fov_check_mode(value: str | None = None) -> str:
    """``value``, else ``$EDGESEG_FOV_CHECK``, else ``warn``: one of :data:`FOV_CHECK_MODES`."""
    mode = (os.environ.get(FOV_CHECK_ENV, "") if value is None else value) or "warn"  # as libedgeseg reads it
    if mode not in FOV_CHECK_MODES:
        source = f"{FOV_CHECK_ENV}={mode}" if value is None else f"fov_check {mode!r}"
        raise DataError(f"{source} is not one of {', '.join(FOV_CHECK_MODES)}")
    return mode


def fov_problem(record: TrainingFov | None, shape_zyx: tuple[int, ...], spacing_zyx: Any, what: str = "input") -> str | None:
    """One line saying that an input of ``shape_zyx`` at ``spacing_zyx`` (mm) has a FOV outside the
    record's by more than :data:`FOV_FACTOR`, or None: where it lies within, or either is unknown."""
    if record is None or spacing_zyx is None or len(shape_zyx) < 2:
        return None
    rows, cols = shape_zyx[-2:]
    spacing = [float(s) for s in spacing_zyx][-2:]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        return None
    fov = slice_fov((rows, cols), spacing)
    low, high = record.fov_mm
    if low / FOV_FACTOR <= fov <= high * FOV_FACTOR:
        return None
    side = f"{rows} x {spacing[0]:g} mm" if rows * spacing[0] >= cols * spacing[1] else f"{cols} x {spacing[1]:g} mm"
    return (f"{what}: field of view {fov:.0f} mm ({side}) lies outside the {low:.0f}-{high:.0f} mm the model was "
            f"trained on by more than a factor {FOV_FACTOR:g}, so the anatomy is at a scale it never saw "
            f"({FOV_CHECK_ENV}=refuse refuses such input, =off silences this)")
