"""Export profiles: named TOML files (``export/*.toml``) that set what an export produces.

A profile fixes formats, precisions, calibration method, max batch and gate thresholds for a
deployment target (``cpu-int8``, ``gpu-fp16``, ``edge-int8``). Command-line flags override
profile values, which override :data:`DEFAULTS`.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeseg.choices import canonical_choice
from edgeseg.errors import DataError
from edgeseg.file_values import expected, has_type

FORMATS = ("torchscript", "onnx")
CALIB_METHODS = ("minmax", "entropy", "percentile")
FP16_CHECKS = ("subset", "full")
GATE_METRICS = ("agreement", "truth")
INT8_SCHEMES = ("cpu", "tensorrt")
# The settings that take one of a few names: a profile or a sweep file spells them as these, in
# any case, as `edgeseg export`'s options take them.
CHOICES: dict[str, tuple[str, ...]] = {"calib_method": CALIB_METHODS, "fp16_check": FP16_CHECKS,
                                       "gate_metric": GATE_METRICS, "int8_scheme": INT8_SCHEMES}
STRUCTURE_PX = 16
# The fewest calibration slices an INT8 graph is quantised from. Vendors' guidance (about 500
# images for TensorRT, at least 300 samples for OpenVINO) is for classification, where an image
# is one sample; a CT slice gives every activation thousands of pixel samples, so what a small
# set lacks is variety: the stratified draw needs four slices (both ends of the intensity range
# and two between) for each of the four class combinations of a two-class task. Fewer are
# refused rather than left to the gate: on a few slices it can pass ranges that clip the rest.
MIN_CALIB_SLICES = 16
# The largest batch an artifact is exported for; a larger figure is a typing error (edgeseg serve
# takes --max-batch up to the same, and Triton refuses a max_batch_size far beyond it).
MAX_BATCH = 1024
# An installed package carries the profiles (setup.py copies export/*.toml there); a checkout
# reads them from export/ at the top of the tree.
_SHIPPED = Path(__file__).resolve().parent / "profiles"
PROFILE_DIR = _SHIPPED if _SHIPPED.is_dir() else Path(__file__).resolve().parents[2] / "export"


@dataclass(frozen=True)
class ExportSettings:
    """What one export produces and how strictly it is checked.

    Args:
        formats: FP32 formats to write ("torchscript", "onnx"); FP16/INT8 need "onnx".
        fp16: also write the FP16 ONNX graph.
        int8: also write the INT8 Q/DQ ONNX graph (needs calibration data).
        trt: also build a TensorRT engine from the lowest-precision ONNX graph.
        calib_method: "minmax", "entropy" or "percentile".
        calib_slices: calibration slices drawn (stratified) from the calibration data.
        max_batch: largest batch the artifacts are exported and checked for.
        verify_slices: held-out slices the gate runs every artifact on.
        fp16_check: "subset" runs the real float16 check (torch half kernels, slow on CPUs) on
            ``fp16_check_slices`` stratified held-out slices, "full" on all of them.
        fp16_check_slices: slices of the "subset" float16 check.
        max_dice_drop: per precision, the largest allowed drop of the worst class (see
            ``gate_metric``); FP32 formats must give identical masks.
        gate_metric: what a class's drop is. "agreement": 1 - Dice(artifact mask, FP32 mask),
            needs no labels and bounds any change. "truth": Dice(FP32 mask, truth) -
            Dice(artifact mask, truth) on the held-out slices' labels, the change in accuracy
            itself; for lesion classes with soft borders, where INT8 moves many near-tied pixels
            without making the mask worse. Needs labelled held-out data.
        int8_scheme: how the INT8 graph quantises activations (weights are always signed,
            symmetric, per channel). "cpu": unsigned 8-bit with a zero point from the calibrated
            range, the form ONNX Runtime and OpenVINO run exactly on every x86 CPU. "tensorrt":
            signed with zero points 0, the only form TensorRT takes; x86 CPUs without VNNI shift
            signed activations by 128 into a u8 x s8 instruction whose 16-bit pair sums saturate,
            so this graph can lose accuracy on them (the gate then keeps it out of ``auto`` there).
            None: "tensorrt" when ``trt`` is set, else "cpu".
        structure_px: the smallest structure, in pixels at model resolution, that an FP16 or
            INT8 artifact may not take off or put on a held-out slice (after the bundle's
            component filters, see ``edgeseg.export.verify.structure_changes``); 0 turns the
            check off.
    """

    formats: tuple[str, ...] = FORMATS
    fp16: bool = False
    int8: bool = False
    trt: bool = False
    calib_method: str = "entropy"
    calib_slices: int = 64
    max_batch: int = 8
    verify_slices: int = 64
    fp16_check: str = "subset"
    fp16_check_slices: int = 8
    max_dice_drop: dict[str, float] = field(default_factory=lambda: {"fp32": 0.0, "fp16": 0.002, "int8": 0.01})
    gate_metric: str = "agreement"
    int8_scheme: str | None = None
    structure_px: int = STRUCTURE_PX

    @property
    def int8_activations(self) -> str:
        """The INT8 scheme this export uses: ``int8_scheme``, or the default for ``trt``."""
        return self.int8_scheme or ("tensorrt" if self.trt else "cpu")

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():  # recorded in the bundle in one spelling
            object.__setattr__(self, name, canonical_choice(getattr(self, name), choices))
        formats = tuple(canonical_choice(f, FORMATS) for f in self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            raise DataError(f"formats must be a non-empty subset of {list(FORMATS)}, got {list(formats)}")
        object.__setattr__(self, "formats", formats)
        if (self.fp16 or self.int8) and "onnx" not in formats:
            raise DataError("FP16 and INT8 artifacts are ONNX graphs: add 'onnx' to the formats")
        if self.calib_method not in CALIB_METHODS:
            raise DataError(f"calibration method must be one of {list(CALIB_METHODS)}, got {self.calib_method!r}")
        if self.gate_metric not in GATE_METRICS:
            raise DataError(f"gate metric must be one of {list(GATE_METRICS)}, got {self.gate_metric!r}")
        if self.int8_scheme is not None and self.int8_scheme not in INT8_SCHEMES:
            raise DataError(f"INT8 scheme must be one of {list(INT8_SCHEMES)}, got {self.int8_scheme!r}")
        if self.trt and self.int8 and self.int8_scheme == "cpu":
            raise DataError("a TensorRT INT8 engine needs signed activations with zero points 0: "
                            "use --int8-scheme tensorrt (the default with --trt)")
        if self.fp16_check not in FP16_CHECKS:
            raise DataError(f"fp16 check must be one of {list(FP16_CHECKS)}, got {self.fp16_check!r}")
        if isinstance(self.structure_px, bool) or not isinstance(self.structure_px, int) or self.structure_px < 0:
            raise DataError(f"structure-px must be an integer >= 0, got {self.structure_px!r}")
        for name in ("calib_slices", "max_batch", "verify_slices", "fp16_check_slices"):
            if int(getattr(self, name)) < 1:
                raise DataError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.int8 and int(self.calib_slices) < MIN_CALIB_SLICES:
            raise DataError(f"calib-slices {self.calib_slices} is below the {MIN_CALIB_SLICES} slices INT8 "
                            f"calibration needs at least (default 64)")
        if int(self.max_batch) > MAX_BATCH:
            raise DataError(f"max-batch must be at most {MAX_BATCH} (as for edgeseg serve), got {self.max_batch}")
        drops = {"fp32": 0.0, "fp16": 0.002, "int8": 0.01, **dict(self.max_dice_drop)}
        for key, value in drops.items():
            if key not in ("fp32", "fp16", "int8") or not 0.0 <= float(value) <= 1.0:
                raise DataError(f"Dice drop threshold {key}={value!r}: expected fp32/fp16/int8 in [0, 1]")
        object.__setattr__(self, "max_dice_drop", {k: float(v) for k, v in drops.items()})

    def override(self, **values: Any) -> "ExportSettings":
        """A copy with every value that is not None replaced (how flags beat a profile)."""
        given = {k: v for k, v in values.items() if v is not None and k != "max_dice_drop"}
        drops = dict(self.max_dice_drop)
        drops.update({k: v for k, v in (values.get("max_dice_drop") or {}).items() if v is not None})
        return replace(self, **given, max_dice_drop=drops)


def _file_types(hint: Any) -> tuple[type, ...]:
    """The types a TOML file gives a setting ``ExportSettings`` annotates with ``hint``: a list for
    a tuple (TOML has no tuples), the type alone for an optional one (a file leaves None out)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return tuple(t for arg in typing.get_args(hint) if arg is not type(None) for t in _file_types(arg))
    if typing.get_origin(hint) is tuple:
        return (list,)
    return (typing.get_origin(hint) or hint,)


# The type each key of a profile file (and of a sweep file's [export]) must have, as ExportSettings
# declares it (TOML's true is not the number 1, nor 1 true); max_dice_drop, a table, is checked apart.
PROFILE_TYPES: dict[str, tuple[type, ...]] = {name: _file_types(hint) for name, hint in
                                              typing.get_type_hints(ExportSettings).items() if name != "max_dice_drop"}


def resolve_profile(name: str) -> Path:
    """A profile path: ``name`` itself if it is a file, else ``export/NAME.toml`` here or in the source tree."""
    if not name.strip():
        raise DataError("export profile name is empty; name one of the shipped profiles or a TOML file")
    direct = Path(name)
    if direct.is_file():
        return direct
    stem = direct.name.removesuffix(".toml")
    for folder in (Path.cwd() / "export", PROFILE_DIR):
        candidate = folder / f"{stem}.toml"
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) if PROFILE_DIR.is_dir() else []
    raise DataError(f"export profile {name!r} not found; expected a TOML file or one of {known}")


def load_profile(name: str) -> ExportSettings:
    """Read a profile TOML into settings; unknown keys and bad values are refused by name."""
    path = resolve_profile(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"export profile {path} is not readable TOML ({exc})") from None
    data.pop("description", None)
    thresholds = data.pop("max_dice_drop", {})
    known = {f.name for f in fields(ExportSettings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"export profile {path}: unknown key(s) {unknown}; known: {sorted(known | {'description'})}")
    if not isinstance(thresholds, dict):
        raise DataError(f"export profile {path}: max_dice_drop must be a table, got {thresholds!r}")
    typed = [(key, value, PROFILE_TYPES[key]) for key, value in data.items()]
    typed += [(f"max_dice_drop.{key}", value, (float,)) for key, value in thresholds.items()]
    for key, value, allowed in typed:
        if not has_type(value, allowed):
            raise DataError(f"export profile {path}: {key} must be {expected(allowed)}, got {value!r}")
    if "formats" in data:
        if not all(isinstance(f, str) for f in data["formats"]):
            raise DataError(f"export profile {path}: formats must list format names, got {data['formats']!r}")
        data["formats"] = tuple(data["formats"])
    try:
        return ExportSettings(**data, max_dice_drop=thresholds)
    except DataError as exc:  # a value out of range, named with the file it is in
        raise DataError(f"export profile {path}: {exc}") from None
