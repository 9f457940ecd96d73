"""Checkpoints: weights plus everything needed to use them, loadable with weights_only=True."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from edgeseg import __version__
from edgeseg.atomic import atomic_write_bytes
from edgeseg.data.field_of_view import RECORD_KEY, parse_training_fov
from edgeseg.errors import CheckpointError, EdgesegError
from edgeseg.models import ModelConfig, build_model
from edgeseg.spec import PreprocessSpec

FORMAT = "edgeseg-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "spec", "class_names", "state_dict")
# Records of the training run that export and evaluation read into; each is a mapping or absent.
RUN_RECORDS = ("postprocess", "split", "train_config", "label_values", "best", "provenance")


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
    # Serialised in memory first: torch's file writer reports a full disk or a file-size limit as
    # a RuntimeError from its C++ (or aborts), where a plain write raises OSError, which the CLI
    # reports as one line naming the file.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint's structure; corrupt or foreign files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    payload = _load_checkpoint_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (no '{FORMAT}' marker)")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {missing}")
    version = payload["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (format_version {version!r} is not a version number)")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['format_version']}; this edgeseg reads {FORMAT_VERSION}")
    _check_records(path, payload)
    return payload


def _check_records(path: Path, payload: dict[str, Any]) -> None:
    """Refuse class names and run records of the wrong shape here, with the checkpoint named,
    rather than as a traceback in whichever command reads them first."""
    def refuse(why: str) -> None:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint ({why[:240]})")

    names = payload["class_names"]
    # A string would pass as a list of one-letter class names.
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        refuse(f"class_names must be a list of non-empty names, got {names!r}")
    if len(set(names)) != len(names):
        refuse(f"class_names name a class twice: {list(names)}")
    for key in RUN_RECORDS:
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            refuse(f"{key} must be a mapping, got {type(payload[key]).__name__} {payload[key]!r}")
    for part, cases in (payload.get("split") or {}).items():
        if not isinstance(cases, (list, tuple)) or not all(isinstance(c, str) for c in cases):
            refuse(f"split[{part!r}] must be a list of case ids, got {cases!r}")
    parse_training_fov(payload.get(RECORD_KEY), CheckpointError, f"{path} is not an edgeseg checkpoint: its")
    label_values = payload.get("label_values")
    if label_values:
        if len(label_values) != len(names) - 1:
            refuse(f"label_values {label_values} has {len(label_values)} entries; class_names {list(names)} "
                   f"has {len(names) - 1} classes besides background")
        for name, values in label_values.items():
            if (not isinstance(values, (list, tuple)) or not values
                    or not all(type(v) is int and 0 < v < 256 for v in values)):
                refuse(f"label_values[{name!r}] must be a list of source label values 1..255, got {values!r}")


def _load_checkpoint_payload(path: Path) -> Any:
    """``torch.load`` with weights only; anything that is not a torch file raises
    CheckpointError "not an edgeseg checkpoint (why)", in one full sentence and without
    torch's advice to load untrusted files with ``weights_only=False``."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    # torch.save writes a zip archive (PK..); files of torch < 1.6 start with a pickle opcode.
    if not magic:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (the file is empty)")
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (neither a torch zip archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the unpickler raises anything for arbitrary bytes
        text = " ".join(str(exc).split())
        # A refused global: keep torch's one-line reason, drop its advice around it.
        reason = text.split("WeightsUnpickler error:", 1)[-1].split(". Please use", 1)[0].strip()
        if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler" in text:
            reason = f"it holds objects other than tensors and plain data: {reason}"
        else:
            detail = text if text and len(text) <= 160 else type(exc).__name__
            reason = f"truncated or corrupt torch archive: {detail}"
        raise CheckpointError(f"{path} is not an edgeseg checkpoint ({reason})") from None


def load_model(path: str | Path, expected: ModelConfig | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint in eval mode; returns (model, payload).

    With ``expected``, a checkpoint of another architecture is refused with the differing fields.
    """
    payload = read_checkpoint(path)
    try:
        config = ModelConfig.from_dict(dict(payload["model"]))
        # Built on the meta device: a config that lies (base 10**9) costs no memory, and the
        # checkpoint's own tensors are assigned in, after their names and shapes are checked.
        with torch.device("meta"):
            model = build_model(config)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not an edgeseg checkpoint (bad model config: {' '.join(str(exc).split())[:200]})") from None
    if len(payload["class_names"]) != config.num_classes:
        raise CheckpointError(f"{path}: class_names {list(payload['class_names'])} name {len(payload['class_names'])} "
                              f"classes; its model has num_classes {config.num_classes}")
    try:
        spec = checkpoint_spec(payload)
        model.check_input_size(*spec.size)
    except EdgesegError as exc:
        raise CheckpointError(f"{path}: its recorded spec does not fit its model: {exc}") from None
    if expected is not None and config != expected:
        raise CheckpointError(f"{path} is from a different model config: {', '.join(config.differences(expected))}")
    state = payload["state_dict"]
    wanted = {name: t.dtype for name, t in model.state_dict().items()}
    if not isinstance(state, dict) or any(not isinstance(t, torch.Tensor) or t.dtype != wanted.get(name, t.dtype)
                                          for name, t in state.items()):
        raise CheckpointError(f"{path}: state_dict must map parameter names to tensors of the model's dtypes")
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{path}: weights do not fit model config {config.to_dict()} ({detail[:200]})") from None
    model.eval()
    return model, payload


def checkpoint_spec(payload: dict[str, Any]) -> PreprocessSpec:
    """The PreprocessSpec stored in a checkpoint."""
    return PreprocessSpec.from_dict(payload["spec"])
