"""What a training run leaves for people and tools: metrics.csv, metrics.json, curves.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.report.curves import plot_training_curves
from edgeseg.report.output import write_csv, write_json
from edgeseg.models import ModelConfig
from edgeseg.spec import PreprocessSpec
from edgeseg.train.config import TrainConfig


def write_records(
    out: Path,
    cfg: TrainConfig,
    spec: PreprocessSpec,
    model_config: ModelConfig,
    params: int,
    history: list[dict[str, Any]],
    best: dict[str, Any],
    split: dict[str, list[str]],
    memory_format: dict[str, Any] | None = None,
    processes: int = 1,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Rewrite the run's metrics files and training-curve plot (each atomically). ``processes``
    (the latest session's, as ``memory_format``) goes into the config: ``batch_size`` is per
    process, so runs alike but for it trained on other global batches and step counts. ``provenance``
    is the checkpoints' record of the data, commands, software and machines of the run."""
    columns = list(history[0].keys()) if history else []
    write_csv(out / "metrics.csv", history, columns)
    write_json(
        out / "metrics.json",
        {
            "config": {**cfg.to_dict(), "params": params, "processes": processes},
            "model": model_config.to_dict(),
            "spec": spec.to_dict(),
            "spec_hash": spec.hash,
            "history": history,
            "best": best,
            "split": split,
            **({"memory_format": memory_format} if memory_format is not None else {}),
            **({"provenance": provenance} if provenance else {}),
        },
    )
    # a k-fold split is made by its fold count and fold, not by the fractions
    how = {"folds": cfg.folds, "fold": cfg.fold} if cfg.folds else {"fractions": list(cfg.fractions)}
    write_json(out / "split.json", {"seed": cfg.seed, **how, **split})
    plot_training_curves(out / "curves.png", history)
