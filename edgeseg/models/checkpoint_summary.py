"""What a checkpoint holds, as plain data, for ``edgeseg inspect CHECKPOINT.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.models.checkpoint import checkpoint_spec, load_model
from edgeseg.models.registry import count_parameters


def summarize_checkpoint(path: str | Path) -> dict[str, Any]:
    """The model (config, parameters, bytes of weights), spec, classes, recipe, training state
    (epoch, best epoch, what ``--resume`` would continue from) and provenance of the checkpoint
    at ``path``. It is read as export and evaluate read it (:func:`load_model`: weights only,
    every record and the weights checked against the model), so what this describes they accept.
    Records that load_model does not need are passed on only where they have their own shape."""
    model, payload = load_model(path)
    spec = checkpoint_spec(payload)
    config = _mapping(payload.get("train_config"))
    best = _mapping(payload.get("best"))
    recipe = _mapping(payload.get("recipe"))
    history = payload.get("history")
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "format_version": payload["format_version"],
        "edgeseg_version": payload.get("edgeseg_version"),
        "model": dict(payload["model"]),
        "parameters": count_parameters(model),
        "weight_bytes": sum(t.numel() * t.element_size() for t in payload["state_dict"].values()),
        "spec": spec.to_dict(),
        "spec_hash": spec.hash,
        "class_names": list(payload["class_names"]),
        "label_values": payload.get("label_values"),
        "recipe": {k: recipe.get(k) for k in ("name", "version", "sha256")} if recipe else None,
        "epoch": _number(payload.get("epoch")),
        "epochs": _number(config.get("epochs")),
        "history_epochs": len(history) if isinstance(history, list) else None,
        "best": {"epoch": _number(best.get("epoch")), "val_dice": _number(best.get("val_dice"))} if best else None,
        "postprocess": payload.get("postprocess"),
        "split": {part: len(cases) for part, cases in _mapping(payload.get("split")).items()},
        "resume": _resume_state(payload),
        "deterministic": config.get("deterministic") is True,
        "provenance": payload.get("provenance"),
        "training_fov": payload.get("training_fov"),  # checked by read_checkpoint
    }


def _resume_state(payload: dict[str, Any]) -> dict[str, Any] | None:
    """What ``--resume`` continues from besides the weights, or None without an optimiser state
    (best.pt: the weights to export and evaluate)."""
    if "optimizer" not in payload:
        return None
    scaler = _mapping(payload.get("grad_scaler"))
    layout = _mapping(payload.get("memory_format"))
    return {"ema_updates": _number(payload.get("ema_updates")) if "train_state_dict" in payload else None,
            "loss_scale": _number(scaler.get("scale")) if scaler else None,
            "loss_scale_clean_steps": _number(scaler.get("_growth_tracker")) if scaler else None,
            "memory_format": layout.get("chosen") if isinstance(layout.get("chosen"), str) else None}


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
