"""Training configuration: every hyper-parameter of a run, recorded with its results."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeseg.errors import EdgesegError
from edgeseg.models.region_order import check_regions
from edgeseg.models.registry import MODELS, ModelConfig
from edgeseg.spec import FITS, INTERPOLATIONS, PreprocessSpec

# Region term (Dice or Tversky) - pixel term (cross-entropy or focal); see edgeseg.train.losses.
LOSSES = ("dice-ce", "dice-focal", "tversky-ce", "tversky-focal")
# Training's layout of weights and batches (train/memory_format.py); "auto" first.
MEMORY_FORMATS = ("auto", "channels-last", "contiguous")
AMP_MODES = ("auto", "off", "bf16", "fp16")
MASK_KINDS = ("auto", "binary", "labels")
# The fields that take one of a few names: recipes and sweep files spell them as these, in any
# case, as `edgeseg train`'s options take them.
CHOICES: dict[str, tuple[str, ...]] = {
    "model": tuple(MODELS), "interpolation": INTERPOLATIONS, "fit": FITS, "amp": AMP_MODES, "mask": MASK_KINDS,
    "loss": LOSSES, "memory_format": MEMORY_FORMATS,
}
# AdamW's first step moves a weight by lr / (1 - beta1) = 10 lr, a float32 scalar: a larger
# learning rate ends the first step in torch's overflow error instead of a refusal.
MAX_LR = 3.4028234663852886e38 / 10


@dataclass
class TrainConfig:
    """Hyper-parameters and inputs of one training run.

    ``labels`` maps each foreground class name to the source label values that form it, in
    class order (class 0 is background), e.g. ``{"liver": [1, 2]}`` merges LiTS liver and
    tumour. ``window`` is the HU window of the PreprocessSpec the model is trained with, and
    ``fit`` its fit ("stretch" or "pad": keep the aspect ratio of non-square slices).
    ``regions`` (e.g. ``[[1, 2], [2]]``) trains one sigmoid output per region instead of softmax
    classes (nnU-Net's region-based training; edgeseg.models.region_order).
    """

    data: str = "phantom"
    out: str = "runs/train"
    model: str = "unet"
    base: int = 32
    depth: int = 4
    size: int = 256
    window: tuple[float, float] = (0.0, 255.0)
    interpolation: str = "bilinear"
    fit: str = "stretch"
    labels: dict[str, list[int]] = field(default_factory=lambda: {"liver": [1]})
    epochs: int = 120
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    augment: bool = True
    augment_p: float = 0.25
    ema_epochs: float = 0.0
    amp: str = "auto"
    intensity: str | None = None
    threads: int = 0
    mask: str = "auto"
    case_pattern: str | None = None
    loss: str = "dice-ce"
    class_weights: list[float] | None = None
    focal_gamma: float = 2.0
    tversky: tuple[float, float] = (0.3, 0.7)
    regions: list[list[int]] | None = None
    folds: int = 0
    fold: int = 0
    recipe: dict[str, Any] | None = None
    sync_bn: bool = False
    cache: str | None = None
    workers: int = -1
    foreground_share: float = 1 / 3
    memory_format: str = "auto"
    deterministic: bool = False

    def __post_init__(self) -> None:
        self.window = tuple(float(v) for v in self.window)
        self.fractions = tuple(float(v) for v in self.fractions)
        self.tversky = tuple(float(v) for v in self.tversky)
        if self.class_weights is not None:
            self.class_weights = [float(v) for v in self.class_weights]
        weights = self.class_weights or []
        values = [v for vs in self.labels.values() for v in vs]
        shared = sorted({v for v in values if values.count(v) > 1})
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be a finite number > 0, got {self.lr}"),
            (not self.lr > MAX_LR, f"learning rate must be at most {MAX_LR:.4g} (AdamW's float32 step overflows "
                                   f"above it), got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be a finite number >= 0, got {self.weight_decay}"),
            (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0,
             f"warmup must be a finite number of epochs >= 0, got {self.warmup_epochs}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.threads >= 0, f"threads must be >= 0 (0: torch's default), got {self.threads}"),
            (all(math.isfinite(f) and 0 <= f <= 1 for f in self.fractions) and self.fractions[0] > 0
             and abs(sum(self.fractions) - 1) < 1e-6,
             f"train/validation/test fractions must each be in [0, 1], sum to 1 and leave cases to train on, "
             f"got {list(self.fractions)}"),
            # every epoch is validated and best.pt chosen on the validation cases (a k-fold split
            # holds out its own fold and ignores the fractions)
            (self.folds or self.fractions[1] > 0,
             f"validation fraction must be > 0: every epoch is validated on held-out cases, got {self.fractions[1]}"),
            (all(math.isfinite(w) and w >= 0 for w in weights) and (not weights or sum(weights[1:]) > 0),
             f"class weights must be finite, >= 0, and not 0 for every foreground class, got {self.class_weights}"),
            (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0,
             f"focal gamma must be a finite number >= 0, got {self.focal_gamma}"),
            (all(math.isfinite(t) and t >= 0 for t in self.tversky) and sum(self.tversky) > 0,
             f"Tversky alpha and beta must be finite, >= 0 and not both 0, got {list(self.tversky)}"),
            (not shared, f"source label value(s) {shared} are given to more than one class in the labels "
                         f"{self.labels}; each value belongs to one class"),
            (self.size >= 1, f"size must be >= 1, got {self.size}"),
            (self.fit in FITS, f"fit must be stretch or pad, got {self.fit!r}"),
            (self.amp in AMP_MODES, f"amp must be auto, off, bf16 or fp16, got {self.amp!r}"),
            (self.memory_format in MEMORY_FORMATS,
             f"memory format must be {', '.join(MEMORY_FORMATS[:-1])} or {MEMORY_FORMATS[-1]}, got {self.memory_format!r}"),
            (len(self.labels) >= 1, "at least one foreground label is needed"),
            (0.0 <= self.augment_p <= 1.0, f"augmentation probability must be in [0, 1], got {self.augment_p}"),
            (0.0 <= self.foreground_share <= 1.0, f"foreground share must be in [0, 1], got {self.foreground_share}"),
            (self.workers >= -1, f"workers must be >= 0 (or -1 for a default from the cores), got {self.workers}"),
            (self.ema_epochs >= 0, f"EMA horizon must be >= 0 epochs (0 = off), got {self.ema_epochs}"),
            (math.isfinite(self.ema_epochs), f"EMA horizon must be a finite number of epochs, got {self.ema_epochs}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.mask in MASK_KINDS, f"mask must be auto, binary or labels, got {self.mask!r}"),
            (self.folds == 0 or self.folds >= 2, f"folds must be 0 (no cross-validation) or >= 2, got {self.folds}"),
            (self.folds == 0 or 0 <= self.fold < self.folds, f"fold must be in 0..{self.folds - 1}, got {self.fold}"),
            (self.class_weights is None or len(self.class_weights) == len(self.labels) + 1,
             f"class weights need one number per class (background first, {len(self.labels) + 1} in all), "
             f"got {self.class_weights}"),
        ]
        for ok, message in checks:
            if not ok:
                raise EdgesegError(message)
        if self.regions is not None:
            self.regions = [list(r) for r in check_regions(self.regions, len(self.labels) + 1)]
        build_spec(self)  # the window, size and interpolation the spec refuses, refused with the rest

    @property
    def class_names(self) -> list[str]:
        return ["background", *self.labels]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        d["fractions"] = list(self.fractions)
        d["tversky"] = list(self.tversky)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# What selects a run's data and split: a resumed run must keep them (another split would mix
# validation cases into training and report the mixed result as the run's).
DATA_KEYS = ("data", "labels", "seed", "fractions", "folds", "fold", "intensity", "mask", "case_pattern")
# What may differ between a run and the same run continued elsewhere (machine, paths, length).
RUN_KEYS = ("epochs", "out", "cache", "workers", "threads", "amp", "memory_format", "recipe", "sync_bn")


def config_differences(recorded: dict[str, Any] | None, cfg: TrainConfig, keys: tuple[str, ...] | None = None) -> list[str]:
    """``"key: recorded -> now"`` for each of ``keys`` (default: every field but ``RUN_KEYS``)
    where the config a run recorded differs from ``cfg``. ``data`` counts as different only where
    ``data.open.same_data`` can tell (a path moved elsewhere may be the same data: the split's
    cases are compared once read); a field the record lacks (a run from an older version) is not
    compared."""
    now = cfg.to_dict()
    keys = keys or tuple(k for k in now if k not in RUN_KEYS)
    found = []
    for key in keys:
        if not recorded or key not in recorded:
            continue
        old, new = recorded[key], now[key]
        if key == "data" and isinstance(old, str) and isinstance(new, str):
            from edgeseg.data.open import same_data

            if same_data(old, new) is not False:  # the same, or moved: the split's cases decide (loop._train)
                continue
        if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
            old, new = list(old), list(new)
        if old != new:
            found.append(f"{key}: {old!r} -> {new!r}")
    return found


def build_model_config(cfg: TrainConfig) -> ModelConfig:
    """The ModelConfig a run trains: its architecture, widths, classes and regions."""
    regions = None if cfg.regions is None else tuple(tuple(r) for r in cfg.regions)
    return ModelConfig(name=cfg.model, num_classes=len(cfg.labels) + 1, base=cfg.base, depth=cfg.depth, regions=regions)


def build_spec(cfg: TrainConfig) -> PreprocessSpec:
    """The PreprocessSpec a run trains with: its window, square size, interpolation and fit."""
    return PreprocessSpec(window=cfg.window, size=(cfg.size, cfg.size), interpolation=cfg.interpolation, fit=cfg.fit)


def parse_labels(text: str) -> dict[str, list[int]]:
    """Parse ``"liver=1+2,spleen=3"`` into ``{"liver": [1, 2], "spleen": [3]}``."""
    labels: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, values = item.partition("=")
        try:
            parsed = [int(v) for v in values.split("+")] if sep else []
        except ValueError:
            parsed = []
        if not name or not parsed or any(not 0 < v < 256 for v in parsed):
            raise EdgesegError(f"labels must look like 'liver=1' or 'liver=1+2,spleen=3' with values 1..255, got {item!r}")
        if name in labels or name == "background":
            raise EdgesegError(f"label name {name!r} is repeated or reserved")
        labels[name] = parsed
    if not labels:
        raise EdgesegError(f"no labels in {text!r}; expected e.g. 'liver=1'")
    return labels


def parse_pair(text: str, what: str) -> tuple[float, float]:
    """Parse ``"LO,HI"`` into two floats."""
    parts = text.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise EdgesegError(f"{what} must be two numbers 'LO,HI', got {text!r}") from None
    return low, high
