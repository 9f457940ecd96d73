"""Post-processing options of a bundle or checkpoint, per class, and the one migration of the
old single ``keep_largest`` flag.

Layout (``manifest.json`` ``postprocess``, and a checkpoint's ``postprocess``)::

    {"resize": "logits",
     "classes": {"1": {"keep_largest": true, "min_pixels": 0,
                       "keep_largest_3d": true, "min_ml": 0.0}}}

Per slice (2-D, 8-connected): ``keep_largest`` keeps the class's largest component, right for an
organ and wrong for multi-focal lesions; ``min_pixels`` removes components smaller than that,
counted at the model's input size (``spec.size``) and scaled by the area ratio at the output
size, so the same number means the same anatomy at any input resolution. Over a volume (3-D,
6-connected, ``predict_volume`` only): ``keep_largest_3d`` keeps the class's largest component
of the volume, ``min_ml`` removes components of less than that many millilitres (voxel volume
from the volume's spacing). A class absent from ``classes`` is left as the network predicted it.
``removed_to`` (written only when not 0) is the class that the pixels a class's filters remove
take instead of background: for lesion sub-classes (ground-glass, consolidation), a small island
of one is better given to the other than taken out of the lesion mask.

Older manifests and checkpoints hold ``{"keep_largest": true|false}`` (one flag for every
class); :meth:`PostprocessOptions.from_dict` turns that into the same flag for each foreground
class, and is the only place that reads either layout.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgeseg.errors import BundleError, DataError, shown
from edgeseg.kernels import ComponentRule

RESIZE_MODES = ("logits", "labels")
CLASS_KEYS = ("keep_largest", "min_pixels", "keep_largest_3d", "min_ml", "removed_to")
# Per-slice filters (keep_largest, min_pixels) that validation tries for each class, least
# filtering first so that a tie keeps the simpler choice. min_pixels counts pixels at the
# model's input size. Training's choice (edgeseg.train.validate) and cross-validation's
# cross-fitted choice (edgeseg.evaluate.cross_validation) both read this list.
SLICE_CANDIDATES = ((False, 0), (True, 0), (False, 4), (False, 16), (False, 64), (False, 256))
# A filter size beyond int64 (the kernels' type) becomes this: more than any slice or volume
# holds, so the filter removes every component, as it says (libedgeseg's ES_FILTER_SIZE_ABOVE_ALL).
FILTER_SIZE_ABOVE_ALL = 2**63 - 1
# The largest min_pixels a manifest may hold, in both runtimes (libedgeseg reads JSON numbers as
# doubles, exact to 2^53; far more pixels than any slice holds).
MAX_MIN_PIXELS = 10**15


@dataclass(frozen=True)
class ClassPostprocess:
    """What post-processing keeps of one class (see the module docstring)."""

    keep_largest: bool = False
    min_pixels: int = 0
    keep_largest_3d: bool = False
    min_ml: float = 0.0
    removed_to: int = 0

    @property
    def filters_slices(self) -> bool:
        return self.keep_largest or self.min_pixels > 0

    @property
    def filters_volume(self) -> bool:
        return self.keep_largest_3d or self.min_ml > 0

    def to_dict(self) -> dict[str, Any]:
        out = {"keep_largest": self.keep_largest, "min_pixels": self.min_pixels,
               "keep_largest_3d": self.keep_largest_3d, "min_ml": self.min_ml}
        # only where used, so that manifests without it read as before in every runtime
        return {**out, "removed_to": self.removed_to} if self.removed_to else out


@dataclass(frozen=True)
class PostprocessOptions:
    """Resize mode and per-class component filters of a bundle (class number -> options)."""

    resize: str = "logits"
    classes: dict[int, ClassPostprocess] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None, num_classes: int) -> "PostprocessOptions":
        """Parse a manifest's or checkpoint's ``postprocess`` (either layout, see the module
        docstring) for a model of ``num_classes`` classes; other keys (validation figures in a
        checkpoint) are ignored. A malformed value raises ``DataError`` naming it."""
        raw = dict(raw or {})
        resize = raw.get("resize", "logits")
        if resize not in RESIZE_MODES:
            raise DataError(f"postprocess.resize must be one of {RESIZE_MODES}, got {shown(resize)}")
        if "classes" in raw and "keep_largest" in raw:
            raise DataError("postprocess holds both the per-class 'classes' and the old 'keep_largest'; keep one")
        if "classes" not in raw:  # the layout before per-class options: one flag for every class
            keep = raw.get("keep_largest", False)
            if keep is not None and not isinstance(keep, bool):
                raise DataError(f"postprocess.keep_largest must be true or false, got {shown(keep)}")
            per_class = {c: ClassPostprocess(keep_largest=True) for c in range(1, num_classes)} if keep else {}
            return cls(resize, per_class)
        entries = raw["classes"]
        if not isinstance(entries, Mapping):
            raise DataError(f"postprocess.classes must map class numbers to options, got {shown(entries)}")
        return cls(resize, {_class_number(k, num_classes): _class_options(k, v, num_classes) for k, v in entries.items()})

    def to_dict(self) -> dict[str, Any]:
        """The manifest / checkpoint layout (JSON-compatible, class numbers as strings)."""
        return {"resize": self.resize,
                "classes": {str(c): opts.to_dict() for c, opts in sorted(self.classes.items())}}

    def slice_rules(self, out_size: tuple[int, int], model_size: tuple[int, int]) -> dict[int, ComponentRule]:
        """Per-slice component rules at ``out_size``: ``min_pixels`` counts pixels at
        ``model_size`` and is scaled by the area ratio (rounded up)."""
        ratio = (out_size[0] * out_size[1]) / (model_size[0] * model_size[1])
        return {c: ComponentRule(o.keep_largest, filter_size(o.min_pixels * ratio) if o.min_pixels else 0, o.removed_to)
                for c, o in self.classes.items() if o.filters_slices}

    def volume_rules(self, spacing: tuple[float, float, float] | None) -> dict[int, ComponentRule]:
        """Volume component rules; ``min_ml`` becomes voxels with ``spacing`` (z, y, x) in mm,
        which a class with ``min_ml`` needs (``DataError`` without it)."""
        rules = {}
        for c, o in self.classes.items():
            if not o.filters_volume:
                continue
            voxels = 0
            if o.min_ml > 0:
                if spacing is None:
                    raise DataError(f"class {c} removes 3-D components under {o.min_ml:g} mL, which needs the "
                                    "volume's voxel spacing; pass a Volume or spacing=(z, y, x) in mm")
                voxels = filter_size(o.min_ml / voxel_ml(spacing))
            rules[c] = ComponentRule(o.keep_largest_3d, voxels, o.removed_to)
        return rules

    @property
    def filters_volume(self) -> bool:
        """True when some class has a 3-D rule (``predict_volume`` then filters the volume)."""
        return any(o.filters_volume for o in self.classes.values())

    @property
    def needs_spacing(self) -> bool:
        """True when some class removes 3-D components by volume in mL."""
        return any(o.min_ml > 0 for o in self.classes.values())

    def ml_filters(self, labels: Mapping[int, str]) -> str:
        """The classes that remove 3-D components by mL, for messages: ``class 3 (kidney) under
        0.1 mL``, joined by commas; empty when none does."""
        return ", ".join(f"class {c} ({labels.get(c, c)}) under {o.min_ml:g} mL"
                         for c, o in sorted(self.classes.items()) if o.min_ml > 0)


def filter_size(x: float) -> int:
    """``ceil(x - 1e-9)`` as a component filter's size in pixels or voxels, or
    ``FILTER_SIZE_ABOVE_ALL`` where that does not fit int64 (+inf included)."""
    size = x - 1e-9
    return FILTER_SIZE_ABOVE_ALL if size >= 2.0**63 else math.ceil(size)


def voxel_ml(spacing: Any) -> float:
    """The voxel volume in mL of ``spacing`` ((z, y, x) in mm), or ``DataError`` where a size is
    not finite and > 0 or the volume is not a positive, finite, normal number (1e-200 mm each)."""
    try:
        sizes = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        sizes = ()
    ml = math.prod(sizes) / 1000.0 if len(sizes) == 3 else math.nan
    if not (all(math.isfinite(s) and s > 0 for s in sizes) and math.isfinite(ml) and ml >= sys.float_info.min):
        shown = " x ".join(f"{s:g}" for s in sizes) + " (z, y, x)" if len(sizes) == 3 else repr(spacing)
        raise DataError(f"spacing must be three finite voxel sizes > 0 in mm whose voxel volume is a normal number, "
                        f"got {shown}")
    return ml


def _class_number(key: Any, num_classes: int) -> int:
    try:
        cls = int(key)
    except (TypeError, ValueError):
        raise DataError(f"postprocess.classes keys must be class numbers, got {shown(key)}") from None
    if str(cls) != str(key).strip() or not 1 <= cls < num_classes:
        raise DataError(f"postprocess.classes key {shown(key)} is not a foreground class 1..{num_classes - 1}")
    return cls


def _class_options(key: Any, value: Any, num_classes: int) -> ClassPostprocess:
    if not isinstance(value, Mapping):
        raise DataError(f"postprocess.classes[{shown(key)}] must be an object, got {shown(value)}")
    unknown = sorted(set(value) - set(CLASS_KEYS))
    if unknown:
        raise DataError(f"postprocess.classes[{shown(key)}] has unknown option(s) {shown(unknown)}; known: {list(CLASS_KEYS)}")
    opts = {**ClassPostprocess().to_dict(), **value}
    for name in ("keep_largest", "keep_largest_3d"):
        if not isinstance(opts[name], bool):
            raise DataError(f"postprocess.classes[{shown(key)}].{name} must be true or false, got {shown(opts[name])}")
    pixels, ml = opts["min_pixels"], opts["min_ml"]
    if isinstance(pixels, bool) or not isinstance(pixels, int) or not 0 <= pixels <= MAX_MIN_PIXELS:
        raise DataError(f"postprocess.classes[{shown(key)}].min_pixels must be an integer from 0 to 10^15, got {shown(pixels)}")
    if isinstance(ml, bool) or not isinstance(ml, (int, float)) or not math.isfinite(ml) or ml < 0:
        raise DataError(f"postprocess.classes[{shown(key)}].min_ml must be a number >= 0, got {shown(ml)}")
    to = opts.get("removed_to", 0)
    if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < num_classes or str(to) == str(key).strip():
        raise DataError(f"postprocess.classes[{shown(key)}].removed_to must be another class number in "
                        f"0..{num_classes - 1}, got {shown(to)}")
    return ClassPostprocess(opts["keep_largest"], pixels, opts["keep_largest_3d"], float(ml), to)


def check_regions_entry(regions: Any, num_classes: int) -> None:
    """A manifest's ``model.regions`` (region models, whose mirrored scores are averaged as
    sigmoids): null, or one non-empty list of classes 1..N-1 per foreground class. libedgeseg's
    ``es_parse_regions`` checks the same, so both runtimes mirror alike or refuse alike."""
    if regions is None:
        return
    whole = lambda c: type(c) is int and 1 <= c < num_classes  # noqa: E731 (not a bool, not 2.0)
    if (not isinstance(regions, list) or len(regions) != num_classes - 1
            or not all(isinstance(r, list) and r and all(whole(c) for c in r) for r in regions)):
        raise BundleError(f"model.regions must be null or one list of classes 1..{num_classes - 1} per "
                          f"foreground class, got {shown(regions)}")
