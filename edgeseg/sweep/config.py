"""The sweep file: a training recipe, a grid of model variants, export and measurement settings.

Example ``SWEEP.toml``::

    [recipe]                      # any `edgeseg train` setting but the grid's four
    data = "phantom:cases=4,size=64,slices=16"
    labels = "liver=1"
    epochs = 5

    [grid]                        # every combination is one point
    model = ["unet", "mobile_unet"]
    base = [8]
    depth = [2]
    size = [64]
    seed = [0, 1, 2]              # optional: repeats of every variant with these training seeds

    [export]                      # INT8 export through the normal gate
    calib = "phantom:cases=3,size=64,slices=16,seed=5"

    [measure]                     # latency of the auto backend on int16 slices
    slice_size = 512

    [choose]                      # optional: the default-model rule applied to the results
    reference = "unet-b8-d2-s64"  # the variant to match
    max_dice_loss = 0.005         # the fastest variant within this much mean Dice of it is chosen
    min_runs = 3                  # finished seeds a variant needs to take part (default: all of them)
    accept_mixed_versions = false # choose even where points were measured with other library versions

A point is one training run. Its id names the variant (``unet-b8-d2-s64``) and, for a seed of
``[grid] seed`` other than the recipe's own (``[recipe] seed``, else the named recipe's, else
0), the seed (``unet-b8-d2-s64-seed1``): so a sweep that gains seeds, or any other grid value,
keeps the runs it finished. The reports and the rule take a variant's runs together (mean Dice
over its seeds, with their spread): the difference between two seeds of one variant is often
larger than the margin the rule decides on.

Every key is checked before anything is written: an unknown key, architecture or value is one
``EdgesegError`` naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeseg.choices import canonical_choice, canonical_choices
from edgeseg.errors import DataError, EdgesegError
from edgeseg.export.profiles import CHOICES as EXPORT_CHOICES
from edgeseg.export.profiles import PROFILE_TYPES
from edgeseg.file_values import expected, has_type, is_number_list
from edgeseg.models.registry import MODELS
from edgeseg.train.config import CHOICES as TRAIN_CHOICES

GRID_KEYS = ("model", "base", "depth", "size")  # every grid names these; ``seed`` is optional
RECIPE_KEYS = {"data": str, "labels": str, "window": list, "intensity": str, "epochs": int, "batch_size": int,
               "lr": float, "weight_decay": float, "warmup_epochs": float, "seed": int, "val_fraction": float,
               "test_fraction": float, "augment": bool, "augment_p": float, "ema_epochs": float, "amp": str,
               "threads": int, "recipe": str, "fit": str, "loss": str, "class_weights": list, "mask": str,
               "case_pattern": str, "folds": int, "fold": int, "memory_format": str,
               "deterministic": bool, "regions": list}
# [export]: the calibration data, the gate's INT8 Dice drop and the export settings a sweep may set,
# typed as a profile types them (the sweep exports ONNX with INT8: the rest it fixes)
EXPORT_KEYS = {"calib": str, "max_dice_drop_int8": float, **{key: PROFILE_TYPES[key] for key in (
    "calib_method", "calib_slices", "verify_slices", "max_batch", "gate_metric", "int8_scheme", "structure_px")}}
MEASURE_KEYS = {"slice_size": int, "batches": list, "runs": int, "warmup": int, "volume_slices": int, "threads": int}
CHOOSE_KEYS = {"reference": str, "max_dice_loss": float, "min_runs": int, "accept_mixed_versions": bool}
MEASURE_DEFAULTS = {"slice_size": 512, "batches": [1, 8], "runs": 20, "warmup": 3, "volume_slices": 32, "threads": 0}


@dataclass(frozen=True)
class Point:
    """One variant of the grid."""

    model: str
    base: int
    depth: int
    size: int
    seed: int | None = None  # None: the recipe's seed

    @property
    def variant(self) -> str:
        """The architecture, width, depth and size: what the reports and the rule compare."""
        return f"{self.model}-b{self.base}-d{self.depth}-s{self.size}"

    @property
    def id(self) -> str:
        return self.variant if self.seed is None else f"{self.variant}-seed{self.seed}"


@dataclass(frozen=True)
class SweepConfig:
    """A parsed, checked sweep file."""

    recipe: dict[str, Any]
    points: list[Point]
    export: dict[str, Any] = field(default_factory=dict)
    measure: dict[str, Any] = field(default_factory=dict)
    choose: dict[str, Any] = field(default_factory=dict)
    # The training recipe named by [recipe] recipe (its record: name, version, sha256, values),
    # read once when the sweep file is loaded; the sweep's own [recipe] keys override its values.
    base_recipe: dict[str, Any] | None = None
    # Why the sweep's exports would be refused, where [export] calib_slices is below the minimum
    # (sweep files written before 2026-12-06 may hold one): its finished points are still read,
    # remeasured and rescored, but nothing is calibrated with it (export_settings raises this).
    calib_refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What makes the sweep's results: a folder holding another is refused (see
        :func:`identity`). ``choose`` is not in it, since it only reads the results: changing it
        never invalidates finished points. A named recipe is in it by name and the values the
        points train with (all but the grid's, which the grid overrides), so a recipe edit that
        changes training starts afresh while a new version that only changes the recipe's own
        model leaves the sweep as it was."""
        identity = {"recipe": self.recipe, "grid": [p.__dict__ for p in self.points], "export": self.export,
                    "measure": self.measure}
        if self.base_recipe is not None:
            identity["base_recipe"] = {"name": self.base_recipe["name"], "values": {
                k: v for k, v in self.base_recipe["values"].items() if k not in GRID_KEYS}}
        return identity


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a sweep's recorded ``to_dict`` that its finished points depend on: all but the
    grid. A point's id says everything the grid sets for it, so a grid that grows (another width,
    more seeds) or shrinks keeps the points it shares with the old one."""
    return {k: v for k, v in config.items() if k != "grid"}


def _checked_table(doc: dict, section: str, allowed: dict[str, type | tuple[type, ...]], where: str) -> dict[str, Any]:
    table = doc.get(section, {})
    if not isinstance(table, dict):
        raise DataError(f"{where}: [{section}] must be a table")
    for key, value in table.items():
        if key not in allowed:
            raise DataError(f"{where}: unknown key {key!r} in [{section}]; known: {sorted(allowed)}")
        types = allowed[key] if isinstance(allowed[key], tuple) else (allowed[key],)
        if not has_type(value, types):
            raise DataError(f"{where}: [{section}] {key} must be {expected(types)}, got {value!r}")
    return dict(table)


def _grid(doc: dict, where: str, recipe_seed: int) -> list[Point]:
    grid = _checked_table(doc, "grid", dict.fromkeys((*GRID_KEYS, "seed"), list), where)
    missing = [k for k in GRID_KEYS if not grid.get(k)]
    if missing:
        raise DataError(f"{where}: [grid] needs non-empty lists for {missing}")
    if not all(isinstance(m, str) for m in grid["model"]):
        raise DataError(f"{where}: [grid] model must list architecture names, got {grid['model']!r}")
    grid["model"] = [canonical_choice(m, MODELS) for m in grid["model"]]  # the points' ids spell them one way
    unknown = [m for m in grid["model"] if m not in MODELS]
    if unknown:
        raise DataError(f"{where}: unknown architecture(s) {unknown} in [grid] model; available: {sorted(MODELS)}")
    for key in ("base", "depth", "size"):
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in grid[key]):
            raise DataError(f"{where}: [grid] {key} must be positive integers, got {grid[key]}")
    seeds = grid.get("seed", [recipe_seed])
    if not seeds or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
        raise DataError(f"{where}: [grid] seed must list non-negative integers, got {seeds}")
    # Seed-major: every variant's first run comes before any variant's repeat, so a sweep stopped
    # part-way has one run of each variant rather than every run of a few.
    points = [Point(*combo, seed=None if seed == recipe_seed else seed)
              for seed in seeds for combo in itertools.product(*(grid[k] for k in GRID_KEYS))]
    for p in points:
        if p.size % 2**p.depth:
            raise DataError(f"{where}: point {p.id}: size {p.size} is not divisible by 2**depth = {2**p.depth}")
    if len({p.id for p in points}) != len(points):
        raise DataError(f"{where}: [grid] lists a value twice")
    return points


def _choose(doc: dict, points: list[Point], where: str, seeds: int) -> dict[str, Any]:
    choose = _checked_table(doc, "choose", CHOOSE_KEYS, where)
    if not choose:
        return {}
    if "reference" not in choose:
        raise DataError(f"{where}: [choose] needs reference, the id of the point to match")
    ids = list(dict.fromkeys(p.variant for p in points))
    if choose["reference"] not in ids:
        raise DataError(f"{where}: [choose] reference {choose['reference']!r} is not a variant of the grid; variants: {ids}")
    loss = float(choose.setdefault("max_dice_loss", 0.005))
    if not 0.0 <= loss <= 1.0:
        raise DataError(f"{where}: [choose] max_dice_loss must be in [0, 1], got {loss}")
    runs = choose.setdefault("min_runs", seeds)
    if not 1 <= runs <= seeds:
        raise DataError(f"{where}: [choose] min_runs must be between 1 and the grid's {seeds} seed(s), got {runs}")
    return choose


def _check_measure(measure: dict[str, Any], where: str) -> None:
    """[measure] values the benchmark cannot run with, refused before any point trains."""
    from edgeseg.runtime.input_checks import MAX_SIDE
    from edgeseg.runtime.runners.base import MAX_THREADS

    batches = measure["batches"]
    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise DataError(f"{where}: [measure] batches must be positive integers, got {batches}")
    bounds = {"runs": (1, None), "warmup": (0, None), "volume_slices": (1, None), "slice_size": (2, MAX_SIDE),
              "threads": (0, MAX_THREADS)}
    for key, (low, high) in bounds.items():
        value = measure[key]
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f">= {low}"
            raise DataError(f"{where}: [measure] {key} must be {span}, got {value}")


def load_sweep(path: str | Path) -> SweepConfig:
    """Parse and check a sweep file; raises DataError (one line) on any unknown or bad entry."""
    path = Path(path)
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"sweep file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{where} is not a readable TOML file ({str(exc).splitlines()[0]})") from None
    unknown = sorted(set(doc) - {"recipe", "grid", "export", "measure", "choose"})
    if unknown:
        raise DataError(f"{where}: unknown section(s) {unknown}; known: ['choose', 'export', 'grid', 'measure', 'recipe']")
    # choices spelled one way, as the command line takes them: the folder records these tables
    recipe = canonical_choices(_checked_table(doc, "recipe", RECIPE_KEYS, where), TRAIN_CHOICES)
    if "data" not in recipe:
        raise DataError(f"{where}: [recipe] needs data")
    export = canonical_choices(_checked_table(doc, "export", EXPORT_KEYS, where), EXPORT_CHOICES)
    measure = {**MEASURE_DEFAULTS, **_checked_table(doc, "measure", MEASURE_KEYS, where)}
    _check_measure(measure, where)
    base_recipe = _base_recipe(recipe, where)
    points = _grid(doc, where, _recipe_seed(recipe, base_recipe))
    sweep = SweepConfig(recipe=recipe, points=points, export=export, measure=measure, base_recipe=base_recipe,
                        choose=_choose(doc, points, where, seeds=len({p.seed for p in points})))  # each variant runs every seed
    for point in sweep.points:
        try:
            train_config(sweep, point, Path("."))  # the recipe's values are checked here, before any work
        except EdgesegError as exc:
            raise DataError(f"{where}: point {point.id}: {exc}") from None
    try:
        export_settings(sweep)  # and the export's
    except EdgesegError as exc:
        if not _only_calibration_short(sweep):
            raise DataError(f"{where}: [export] {exc}") from None
        sweep = dataclasses.replace(sweep, calib_refusal=f"{where}: [export] {exc}")
    return sweep


def _only_calibration_short(sweep: SweepConfig) -> bool:
    """Whether calib_slices below the minimum is all that export_settings refuses in ``sweep``."""
    from edgeseg.export.profiles import MIN_CALIB_SLICES

    slices = sweep.export.get("calib_slices")
    if not isinstance(slices, int) or slices >= MIN_CALIB_SLICES:
        return False
    try:
        export_settings(dataclasses.replace(sweep, export={**sweep.export, "calib_slices": MIN_CALIB_SLICES}))
    except EdgesegError:
        return False
    return True


def export_settings(sweep: SweepConfig):
    """The ExportSettings every point is exported with (ONNX, INT8 through the gate) and the
    calibration source (the training data unless [export] calib names another)."""
    from edgeseg.export.profiles import MIN_CALIB_SLICES, ExportSettings

    if sweep.calib_refusal is not None:  # raising it makes another sweep, whose folder is another
        raise DataError(f"{sweep.calib_refusal}; set calib_slices to {MIN_CALIB_SLICES} or more and run the sweep "
                        f"into a new --out (its points train again: a folder made with {sweep.export['calib_slices']} "
                        f"holds another sweep)")
    opts = dict(sweep.export)
    calib = opts.pop("calib", sweep.recipe["data"])
    drop = opts.pop("max_dice_drop_int8", None)
    return ExportSettings(formats=("onnx",), int8=True).override(**opts, max_dice_drop={"fp16": None, "int8": drop}), calib


def _recipe_seed(recipe: dict[str, Any], base_recipe: dict[str, Any] | None) -> int:
    """The seed a point trains with unless the grid gives it another."""
    from edgeseg.train.config import TrainConfig

    default = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "seed")
    seed = recipe.get("seed", (base_recipe or {}).get("values", {}).get("seed", default))
    return int(seed)


def _base_recipe(recipe: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The record of the training recipe ``[recipe] recipe`` names (a shipped name or a file)."""
    if "recipe" not in recipe:
        return None
    from edgeseg.train.recipes import load_recipe

    try:
        return load_recipe(recipe["recipe"]).record()
    except EdgesegError as exc:
        raise DataError(f"{where}: [recipe] recipe: {exc}") from None


def train_config(sweep: SweepConfig, point: Point, out: Path):
    """The TrainConfig of one point: the named training recipe's values (if any), overridden by
    the sweep's [recipe] keys, with the point's architecture, width, depth and size."""
    from edgeseg.train.config import TrainConfig, parse_labels

    base = sweep.base_recipe["values"] if sweep.base_recipe else {}
    recipe = {k: tuple(v) if k in ("window", "tversky") else v for k, v in base.items() if k not in GRID_KEYS}
    recipe.update((k, v) for k, v in sweep.recipe.items() if k != "recipe")
    if sweep.base_recipe:
        recipe["recipe"] = sweep.base_recipe
    if "class_weights" in sweep.recipe:
        weights = sweep.recipe["class_weights"]
        if not is_number_list(weights):
            raise DataError(f"[recipe] class_weights must be a list of numbers, got {weights}")
        recipe["class_weights"] = [float(w) for w in weights]
    val, test = recipe.pop("val_fraction", 0.15), recipe.pop("test_fraction", 0.15)
    if isinstance(recipe.get("labels"), str):
        recipe["labels"] = parse_labels(recipe["labels"])
    if "window" in recipe:
        if not is_number_list(recipe["window"], count=2):
            raise DataError(f"[recipe] window must be two numbers [LO, HI], got {list(recipe['window'])}")
        recipe["window"] = tuple(recipe["window"])
    if point.seed is not None:
        recipe["seed"] = point.seed
    return TrainConfig(**recipe, fractions=(1.0 - val - test, val, test), model=point.model, base=point.base,
                       depth=point.depth, size=point.size, out=str(out))
