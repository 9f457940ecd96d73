"""PreprocessSpec: the one definition of how CT Hounsfield units become model input.

A spec is frozen, hashable and JSON-serialisable. It is written into every checkpoint and bundle
and read back by the runtime, so training and deployment apply exactly the same numbers.

Semantics (implemented by ``edgeseg.kernels.reference`` and the C kernels):

1. clip HU to ``[window[0], window[1]]``;
2. resize the clipped slice to ``size`` (rows, cols) with ``interpolation``: ``"bilinear"``
   uses pixel centres (``align_corners=False``) with edge clamping, ``"area"`` averages the
   exact source area under each output pixel;
3. map the window to [0, 1], then apply ``(v - mean) / std``;
4. lay out as NCHW in ``dtype``.

``fit`` says how a slice of another shape meets ``size``:

* ``"stretch"`` (the default, and what a spec written without ``fit`` means) resizes the whole
  slice to ``size``, changing its aspect ratio when the shapes differ;
* ``"pad"`` keeps the aspect ratio. A slice of ``rows x cols`` is scaled by
  ``s = min(size[0] / rows, size[1] / cols)`` to a box of ``box_rows x box_cols`` and placed,
  centred, in ``size``; the rest holds the window's low value, so padding reaches the model as
  the same number as clipped air. The box is computed in integers, once, by ``fit_box``: the
  limiting side fills the model exactly (``size[0]`` when ``rows * size[1] >= cols * size[0]``,
  else ``size[1]``) and the other side is ``other * s`` rounded to the nearest integer, halves
  up: ``(2 * other * model + limiting) // (2 * limiting)``, where ``limiting`` is the slice's
  side along the limiting axis and ``model`` the model's side along it. The offsets
  are ``top = (size[0] - box_rows) // 2`` and ``left = (size[1] - box_cols) // 2`` (an odd
  margin leaves its extra pixel at the bottom or right). A slice whose exact scaled short side
  ``other * s`` is under 1 pixel (a 1x512 slice into 256x256: 0.5) is refused. Post-processing
  takes the box back out of the model output and resizes it to the slice's shape, so labels
  always come back at the input's shape.

``orientation`` names the in-plane layout the model was trained on. ``"LPS"`` is the radiological
display of an axial slice: columns run to the patient's left, rows to posterior. Readers deliver
slices in that layout, so the spec only records it and the runtime refuses anything else.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeseg.errors import DataError, SpecError, shown

INTERPOLATIONS = ("bilinear", "area")
DTYPES = ("float32", "float16")
ORIENTATIONS = ("LPS",)
FITS = ("stretch", "pad")
SCHEMA_VERSION = 1
MAX_SIZE = 8192


@dataclass(frozen=True)
class PreprocessSpec:
    """How HU become model input; see the module docstring for the exact semantics.

    Args:
        window: (low, high) HU window; low < high.
        size: output (rows, cols).
        interpolation: "bilinear" or "area".
        mean: subtracted after mapping the window to [0, 1].
        std: divisor after subtracting ``mean``; > 0.
        orientation: in-plane layout of the slices; only "LPS" is defined.
        dtype: model input dtype, "float32" or "float16".
        fit: "stretch" (resize the slice to ``size``) or "pad" (keep the aspect ratio and pad
            with the window's low value); see the module docstring for the exact geometry.

    Example:
        >>> spec = PreprocessSpec(window=(-100.0, 400.0), size=(256, 256))
        >>> PreprocessSpec.from_json(spec.to_json()) == spec
        True
    """

    window: tuple[float, float] = (0.0, 255.0)
    size: tuple[int, int] = (256, 256)
    interpolation: str = "bilinear"
    mean: float = 0.0
    std: float = 1.0
    orientation: str = "LPS"
    dtype: str = "float32"
    fit: str = "stretch"

    def __post_init__(self) -> None:
        window = _pair(self.window, "window", float)
        size = _pair(self.size, "size", int)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "size", size)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SpecError(f"{name} must be a number, got {shown(value)}")
            object.__setattr__(self, name, float(value))
        low, high = window
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpecError(f"window must be finite, got {window}")
        if not low < high:
            raise SpecError(f"window low must be below high, got low={low} high={high}")
        for n in size:
            if not 1 <= n <= MAX_SIZE:
                raise SpecError(f"size must be between 1 and {MAX_SIZE} per axis, got {size}")
        for name in ("interpolation", "dtype", "orientation", "fit"):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"{name} must be a string, got {shown(getattr(self, name))}")
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(f"interpolation must be one of {INTERPOLATIONS}, got {shown(self.interpolation)}")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype must be one of {DTYPES}, got {shown(self.dtype)}")
        if self.orientation not in ORIENTATIONS:
            raise SpecError(f"orientation must be one of {ORIENTATIONS}, got {shown(self.orientation)}")
        if self.fit not in FITS:
            raise SpecError(f"fit must be one of {FITS}, got {shown(self.fit)}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std)) or self.std <= 0:
            raise SpecError(f"std must be finite and > 0 and mean finite, got mean={self.mean} std={self.std}")

    @property
    def scale_offset(self) -> tuple[float, float]:
        """(a, b) such that model input = a * clipped_hu + b."""
        low, high = self.window
        a = 1.0 / ((high - low) * self.std)
        b = (-low / (high - low) - self.mean) / self.std
        return a, b

    def fit_box(self, rows: int, cols: int) -> tuple[int, int, int, int]:
        """(box_rows, box_cols, top, left): where a ``rows x cols`` slice lands in ``size``.

        With ``fit="stretch"`` the box is the whole model input, ``(*size, 0, 0)``. With
        ``fit="pad"`` it is the aspect-preserving box of the module docstring, computed in
        integers; a slice whose scaled short side would be under one pixel raises ``DataError``
        naming its shape.
        """
        out_rows, out_cols = self.size
        rows, cols = int(rows), int(cols)
        if rows < 1 or cols < 1:
            raise DataError(f"a slice needs at least one row and column, got {rows}x{cols}")
        if self.fit == "stretch":
            return out_rows, out_cols, 0, 0
        rows_limit = rows * out_cols >= cols * out_rows
        # the other side scaled exactly is num / den px
        num, den = (cols * out_rows, rows) if rows_limit else (rows * out_cols, cols)
        if num < den:
            raise DataError(f"a {rows}x{cols} slice cannot be padded into {out_rows}x{out_cols}: its short side "
                            f"would scale to {num / den:.3g} px, under 1 (fit=pad)")
        other = (2 * num + den) // (2 * den)  # nearest integer, halves up
        box_rows, box_cols = (out_rows, other) if rows_limit else (other, out_cols)
        return box_rows, box_cols, (out_rows - box_rows) // 2, (out_cols - box_cols) // 2

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with lists for tuples, plus the schema version; ``fit`` only when it is
        not ``"stretch"``, so specs written before ``fit`` existed keep their JSON and hash."""
        d = asdict(self)
        if self.fit == "stretch":
            del d["fit"]
        d["window"] = list(self.window)
        d["size"] = list(self.size)
        d["schema"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, so equal specs give equal text."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON; stable across runs."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        """Build a spec from ``to_dict`` output; unknown keys or a newer schema are refused."""
        if not isinstance(data, dict):
            raise SpecError(f"a PreprocessSpec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        schema = data.pop("schema", SCHEMA_VERSION)
        if not _is_json_int(schema) or schema != SCHEMA_VERSION:
            raise SpecError(f"PreprocessSpec schema {schema} is not supported (this edgeseg reads {SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown PreprocessSpec field(s) {unknown}; known: {sorted(known)}")
        # JSON's types, as libedgeseg reads them: the constructor's int() and float() would also
        # take true, "64" and 64.0, which a spec written by to_dict never holds.
        for name, whole in (("window", False), ("size", True)):
            value = data.get(name, [0, 0])
            if not (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(_is_json_int(v) or (not whole and isinstance(v, float)) for v in value)):
                raise SpecError(f"{name} must be a pair of {'whole numbers' if whole else 'numbers'}, got {shown(value)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        """Parse JSON written by ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"PreprocessSpec is not valid JSON: {exc}") from None
        except RecursionError:  # '[[[[...' nests deeper than the parser recurses
            raise SpecError("PreprocessSpec is not valid JSON: nested too deeply") from None
        return cls.from_dict(data)


def _is_json_int(value: Any) -> bool:
    """A JSON integer: not a bool (an int in Python), not 2.0."""
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: Any, name: str, kind: type[int] | type[float]) -> tuple[Any, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise SpecError(f"{name} must be a pair, got {shown(value)}") from None
    if len(items) != 2:
        raise SpecError(f"{name} must be a pair, got {shown(value)}")
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{name} must hold numbers, got {shown(value)}") from None
    if kind is int and any(float(v) != int(v) for v in items):
        raise SpecError(f"{name} must hold whole numbers, got {shown(value)}")
    return out
