"""Checkpoints: weights plus everything needed to use them, loadable with weights_only=True."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from edgeseg import __version__
from edgeseg.atomic import atomic_path
from edgeseg.errors import CheckpointError
from edgeseg.models import ModelConfig, build_model
from edgeseg.spec import PreprocessSpec

FORMAT = "edgeseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "spec", "class_names", "state_dict")


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_config: ModelConfig,
    spec: PreprocessSpec,
    class_names: list[str],
    **extra: Any,
) -> None:
    """Write a checkpoint atomically: a crash mid-write never leaves a partial file.

    ``extra`` holds only plain data (numbers, strings, lists, dicts, tensors), so the file loads
    with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "edgeseg_version": __version__,
        "model": model_config.to_dict(),
        "spec": spec.to_dict(),
        "class_names": list(class_names),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint's structure; corrupt or foreign files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable edgeseg checkpoint ({first[:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {missing}")
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this edgeseg reads {FORMAT_VERSION}")
    return payload


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode; returns (model, payload).

    With ``expected``, a checkpoint of another architecture is refused with the differing fields.
    """
    payload = read_checkpoint(path)
    config = ModelConfig.from_dict(payload["model"])
    if expected is not None and config != expected:
        raise CheckpointError(f"{path} is from a different model config: {', '.join(config.differences(expected))}")
    model = build_model(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{path}: weights do not fit model config {config.to_dict()} ({detail[:200]})") from None
    model.eval()
    return model, payload


def checkpoint_spec(payload: dict[str, Any]) -> PreprocessSpec:
    """The PreprocessSpec stored in a checkpoint."""
    return PreprocessSpec.from_dict(payload["spec"])
