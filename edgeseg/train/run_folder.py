"""A run folder before training starts: whether it may be trained into, and whether its last.pt
can be continued with a configuration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgeseg.errors import CheckpointError, EdgesegError
from edgeseg.models import ModelConfig
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.spec import PreprocessSpec
from edgeseg.train.config import DATA_KEYS, TrainConfig, build_model_config, build_spec, config_differences


def check_start(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a training over one ``out`` already holds (its last.pt) unless asked to:
    ``resume`` continues it, ``overwrite`` trains again from epoch 1 (its checkpoints go once the
    data is read and checked)."""
    last = Path(out) / "last.pt"
    if resume and overwrite:
        raise EdgesegError("--resume continues the training in --out and --overwrite starts it again; give one")
    if not resume and not overwrite and last.is_file():
        raise EdgesegError(f"{out} already holds a training ({last.name}); --resume continues it, --overwrite "
                           "trains again from epoch 1, or give another --out")


def busy_message(out: str | Path) -> str:
    return f"{out} is being trained by another process; wait for it to finish, or give another --out"


def check_resumable(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read ``path`` (a run's last.pt) and refuse it unless ``cfg`` continues that run: the same
    data and split, model config and PreprocessSpec, and an optimiser state. Returns it."""
    payload = read_checkpoint(path)
    changed = config_differences(payload.get("train_config"), cfg, DATA_KEYS)
    if changed:
        raise CheckpointError(f"cannot resume {path} on other data or another split ({'; '.join(changed)}); "
                              "train into another --out")
    saved = ModelConfig.from_dict(payload["model"])
    now = build_model_config(cfg)
    if saved != now:
        raise CheckpointError(f"cannot resume {path}: it is from a different model config ({', '.join(saved.differences(now))})")
    if PreprocessSpec.from_dict(payload["spec"]) != build_spec(cfg):
        raise CheckpointError(f"cannot resume {path}: it was trained with another PreprocessSpec")
    if "optimizer" not in payload:
        raise CheckpointError(f"cannot resume from {path}: it holds no optimiser state (use last.pt)")
    check_scaler_state(path, payload.get("grad_scaler"))
    if int(payload.get("epoch", 0)) > cfg.epochs:  # it would end at once, reporting a longer run as this one
        raise CheckpointError(f"cannot resume {path}: it is trained to {int(payload['epoch'])} epochs, more than "
                              f"--epochs {cfg.epochs}; give --epochs {int(payload['epoch'])} or more")
    # The run's record holds one config for all its epochs: a loss, learning rate or augmentation
    # changed half-way would be reported as the run's from epoch 1 (cv and sweep refuse it too).
    # So is --deterministic: a run is repeatable as a whole or not at all, and a resume that
    # forgot the flag would break that silently. Runs from before the flag were not.
    recorded = payload.get("train_config")
    if isinstance(recorded, dict):
        recorded = {"deterministic": False, **recorded}
    changed = config_differences(recorded, cfg)
    if changed:
        raise CheckpointError(f"cannot resume {path} with other training settings ({'; '.join(changed)}); give the "
                              "run's settings again (only --epochs, --threads, --workers, --amp, --memory-format and "
                              "--cache may change), or train into another --out")
    return payload


def check_same_rounding(path: Path, payload: dict[str, Any], session: dict[str, Any]) -> None:
    """Under --deterministic, refuse to resume ``path`` with settings that round floats otherwise
    than its last session did (``session``: this one's threads, amp and memory format, as the
    provenance records them). Without the flag a resume may change them and continue, not bit for
    bit; with it the run is to repeat as a whole, and a resume on another thread count (another
    OMP_NUM_THREADS, another machine's cores) would lose that without a word."""
    sessions = ((payload.get("provenance") or {}).get("sessions") or [{}])
    last = sessions[-1] if isinstance(sessions[-1], dict) else {}
    changed = [f"{key}: {last[key]} -> {value}" for key, value in session.items()
               if key in last and last[key] != value]
    if changed:
        flags = {"threads": f"--threads {last.get('threads')}", "amp": f"--amp {last.get('amp')}",
                 "memory_format": f"--memory-format {last.get('memory_format')}"}
        again = " ".join(flags[item.split(":")[0]] for item in changed)
        raise CheckpointError(f"cannot resume {path} under --deterministic with settings that round otherwise than "
                              f"its last session ({'; '.join(changed)}); give {again}, or train into another --out")


def check_scaler_state(path: Path, state: Any) -> None:
    """Refuse a ``grad_scaler`` record (the fp16 loss scaler's state) that GradScaler would
    take and then train with: a scale of 0 skips nothing and trains on zero gradients, a NaN or
    a string fails steps later with a traceback."""
    if state is None:
        return
    # key: ((lowest, above the highest, whether the lowest is allowed), whether an integer); the
    # scale and the step count are held in a float32 and an int32 tensor
    ranges = {"scale": ((0.0, 3.4e38, False), False), "growth_factor": ((1.0, 3.4e38, False), False),
              "backoff_factor": ((0.0, 1.0, False), False), "growth_interval": ((1, 2**31, True), True),
              "_growth_tracker": ((0, 2**31, True), True)}

    def fits(value: Any, bounds: tuple, integer: bool) -> bool:
        low, high, low_ok = bounds
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (not integer or isinstance(value, int)) and (low <= value if low_ok else low < value) and value < high

    if not isinstance(state, dict) or set(state) != set(ranges) or not all(
            fits(state[key], *ranges[key]) for key in ranges):
        raise CheckpointError(f"cannot resume {path}: its grad_scaler record is not a loss scaler's state "
                              f"({str(state)[:200]})")
