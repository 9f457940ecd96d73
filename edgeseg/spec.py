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

from edgeseg.errors import SpecError

INTERPOLATIONS = ("bilinear", "area")
DTYPES = ("float32", "float16")
ORIENTATIONS = ("LPS",)
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

    def __post_init__(self) -> None:
        window = _pair(self.window, "window", float)
        size = _pair(self.size, "size", int)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "size", size)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise SpecError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        low, high = window
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpecError(f"window must be finite, got {window}")
        if not low < high:
            raise SpecError(f"window low must be below high, got low={low} high={high}")
        for n in size:
            if not 1 <= n <= MAX_SIZE:
                raise SpecError(f"size must be between 1 and {MAX_SIZE} per axis, got {size}")
        for name in ("interpolation", "dtype", "orientation"):
            if not isinstance(getattr(self, name), str):
                raise SpecError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise SpecError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.orientation not in ORIENTATIONS:
            raise SpecError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std)) or self.std <= 0:
            raise SpecError(f"std must be finite and > 0 and mean finite, got mean={self.mean} std={self.std}")

    @property
    def scale_offset(self) -> tuple[float, float]:
        """(a, b) such that model input = a * clipped_hu + b."""
        low, high = self.window
        a = 1.0 / ((high - low) * self.std)
        b = (-low / (high - low) - self.mean) / self.std
        return a, b

    def to_dict(self) -> dict[str, Any]:
        """A plain dict with lists for tuples, plus the schema version."""
        d = asdict(self)
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
        if schema != SCHEMA_VERSION:
            raise SpecError(f"PreprocessSpec schema {schema} is not supported (this edgeseg reads {SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown PreprocessSpec field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSpec":
        """Parse JSON written by ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"PreprocessSpec is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _pair(value: Any, name: str, kind: type) -> tuple:
    try:
        items = tuple(value)
    except TypeError:
        raise SpecError(f"{name} must be a pair, got {value!r}") from None
    if len(items) != 2:
        raise SpecError(f"{name} must be a pair, got {value!r}")
    try:
        out = tuple(kind(v) for v in items)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{name} must hold numbers, got {value!r}") from None
    if kind is int and any(float(v) != int(v) for v in items):
        raise SpecError(f"{name} must hold whole numbers, got {value!r}")
    return out
