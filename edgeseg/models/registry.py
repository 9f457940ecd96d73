"""Model configurations and the registry of architectures that builds a model from one."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeseg.errors import ModelConfigError
from edgeseg.models.region_order import check_regions


@dataclass(frozen=True)
class Architecture:
    """A registry entry: where the model class lives, its fixed arguments, and one line about it.

    The class is named by module and attribute, so listing the registry never imports torch.
    """

    module: str
    cls: str
    summary: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self):
        """The torch module class of this entry."""
        return getattr(importlib.import_module(self.module), self.cls)


MODELS: dict[str, Architecture] = {
    "unet": Architecture("edgeseg.models.unet", "UNet", "U-Net: max pooling, two 3x3 convs per level, transposed-conv decoder",
                         {"block": "plain"}),
    "resunet": Architecture("edgeseg.models.unet", "UNet", "U-Net with residual blocks", {"block": "residual"}),
    "strided_resunet": Architecture("edgeseg.models.strided_resunet", "StridedResUNet",
                                    "strided-conv residual U-Net (MONAI UNet layout, num_res_units=2)"),
    "mobile_unet": Architecture("edgeseg.models.mobile_unet", "MobileUNet",
                                "inverted-residual encoder, half-width separable decoder, bilinear upsampling"),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's architecture; stored in checkpoints and bundles.

    Args:
        name: a key of ``MODELS``.
        in_channels: input channels.
        num_classes: output classes, background included.
        base: width of the first level.
        depth: number of down-sampling steps.
        regions: None for softmax outputs; else the regions of region-based training
            (edgeseg.models.region_order), one sigmoid output each, turned into class scores.
    """

    name: str = "unet"
    in_channels: int = 1
    num_classes: int = 2
    base: int = 32
    depth: int = 4
    regions: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.regions is not None:
            object.__setattr__(self, "regions", check_regions(self.regions, self.num_classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain data; ``regions`` only where set, so softmax models record what they always did."""
        data = asdict(self)
        if self.regions is None:
            del data["regions"]
        else:
            data["regions"] = [list(r) for r in self.regions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def differences(self, other: "ModelConfig") -> list[str]:
        """Human-readable 'field: a != b' for each field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}={a.get(k)!r} vs {b.get(k)!r}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def check_model_name(name: str) -> None:
    """Raise ModelConfigError listing the registered names when ``name`` is not one."""
    if name not in MODELS:
        raise ModelConfigError(f"unknown model {name!r}; available: {sorted(MODELS)}")


def build_model(config: ModelConfig):
    """Instantiate the torch module described by ``config``."""
    check_model_name(config.name)
    if config.num_classes < 2:
        raise ModelConfigError(f"num_classes must be >= 2 (background + at least one class), got {config.num_classes}")
    entry = MODELS[config.name]
    kwargs = dict(in_channels=config.in_channels, base=config.base, depth=config.depth, **entry.kwargs)
    if config.regions is not None:
        from edgeseg.models.regions import build_region_model

        return build_region_model(entry.load(), config.regions, **kwargs)
    return entry.load()(num_classes=config.num_classes, **kwargs)


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
