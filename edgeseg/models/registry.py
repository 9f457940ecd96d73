"""Model configurations and the registry that builds a model from one."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from edgeseg.errors import ModelConfigError

# name -> fixed keyword arguments of UNet
MODELS: dict[str, dict[str, Any]] = {
    "unet": {"block": "plain"},
    "resunet": {"block": "residual"},
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model's architecture; stored in checkpoints and bundles.

    Args:
        name: a key of ``MODELS`` ("unet" or "resunet").
        in_channels: input channels.
        num_classes: output classes, background included.
        base: width of the first level.
        depth: number of down-sampling steps.
    """

    name: str = "unet"
    in_channels: int = 1
    num_classes: int = 2
    base: int = 32
    depth: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        return [f"{k}={a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]


def build_model(config: ModelConfig):
    """Instantiate the torch module described by ``config``."""
    from edgeseg.models.unet import UNet

    if config.name not in MODELS:
        raise ModelConfigError(f"unknown model {config.name!r}; available: {sorted(MODELS)}")
    return UNet(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        base=config.base,
        depth=config.depth,
        **MODELS[config.name],
    )


def count_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
