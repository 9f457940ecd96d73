"""The training loop: epochs of augmented batches, validation Dice, checkpoints, metrics."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.data import open_dataset, split_cases
from edgeseg.data.folds import fold_split
from edgeseg.errors import CheckpointError, DataError
from edgeseg.models import ModelConfig, build_model, count_parameters
from edgeseg.spec import PreprocessSpec
from edgeseg.train.augment import AugmentConfig, BatchAugmenter
from edgeseg.models.checkpoint import read_checkpoint, save_checkpoint
from edgeseg.train.config import TrainConfig, build_spec
from edgeseg.data.slice_set import SliceSet
from edgeseg.train import distributed
from edgeseg.train.distributed import ProcessPlace, ShardedShuffle, TrainSampler
from edgeseg.train.ema import WeightEMA, ema_decay
from edgeseg.train.losses import build_loss
from edgeseg.train.precision import autocast_dtype
from edgeseg.train.records import write_records
from edgeseg.train.schedule import lr_at
from edgeseg.train.validate import choose_postprocess, validate, validation_voxel_ml

log = logging.getLogger("edgeseg.train")


def prepare(cfg: TrainConfig) -> dict[str, Any]:
    """Load the data, split it by case, and pre-process the train and validation slices."""
    label_values = sorted({v for values in cfg.labels.values() for v in values})
    volumes = open_dataset(cfg.data, intensity=cfg.intensity, case_pattern=cfg.case_pattern, mask=cfg.mask,
                           label_values=label_values)
    ids = [v.case_id for v in volumes]
    if len(set(ids)) != len(ids):
        raise DataError(f"case ids repeat in {cfg.data}; each case must appear once")
    if len(volumes) < 2:
        raise DataError(f"{cfg.data} holds {len(volumes)} case(s); training needs at least 2 (train and validation)")
    split = fold_split(ids, cfg.folds, cfg.fold, cfg.seed) if cfg.folds else split_cases(ids, cfg.fractions, cfg.seed)
    spec = build_spec(cfg)
    by_id = {v.case_id: v for v in volumes}
    sets = {name: SliceSet.from_volumes([by_id[c] for c in split[name]], spec, cfg.labels) for name in ("train", "val")}
    return {"split": split, "spec": spec, **sets, "val_voxel_ml": validation_voxel_ml([by_id[c] for c in split["val"]], spec)}


SamplerFactory = Callable[[SliceSet, ProcessPlace, TrainConfig], TrainSampler]


def shuffled_slices(train_set: SliceSet, place: ProcessPlace, cfg: TrainConfig) -> TrainSampler:
    """The default sampler: every training slice once per epoch, shuffled, shared across processes."""
    return ShardedShuffle(len(train_set), cfg.batch_size, place.rank, place.world_size, cfg.seed)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, on_epoch: Callable | None = None,
          make_sampler: SamplerFactory = shuffled_slices) -> dict[str, Any]:
    """Train a model as ``cfg`` says; writes best.pt, last.pt, metrics and curves under cfg.out.

    With ``resume``, training continues from ``cfg.out/last.pt`` (same model, spec and data),
    restoring weights, optimiser state, history and the epoch counter. Started by torchrun,
    each process trains a DDP replica on its share of every batch (``make_sampler`` gives each
    its share); rank 0 alone validates and writes, and only its result holds the history.
    """
    place = distributed.place_from_env()
    device = distributed.start(place, cfg.sync_bn)
    try:
        return _train(cfg, resume, progress and place.is_main, on_epoch, make_sampler, place, device)
    finally:
        distributed.stop(place)


def _train(cfg, resume, progress, on_epoch, make_sampler, place, device) -> dict[str, Any]:
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_config = ModelConfig(name=cfg.model, num_classes=len(cfg.labels) + 1, base=cfg.base, depth=cfg.depth)
    model = build_model(model_config)
    model.check_input_size(cfg.size, cfg.size)
    data = prepare(cfg)
    spec, train_set, val_set = data["spec"], data["train"], data["val"]
    model.to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, best = 1, {"epoch": 0, "val_dice": -1.0}
    payload = _resume(out / "last.pt", model, optimizer, model_config, spec, device) if resume else None
    if payload is not None:
        start_epoch, history, best = int(payload["epoch"]) + 1, list(payload["history"]), dict(payload["best"])
    if place.is_main:
        out.mkdir(parents=True, exist_ok=True)
    sampler = make_sampler(train_set, place, cfg)
    state = _LoopState(cfg, model, model_config, spec, optimizer, device, train_set, val_set, data["split"], out,
                       sampler, place)
    if payload is not None and state.ema is not None:
        # The EMA weights are the checkpoint's state_dict; without a saved update count (a
        # checkpoint trained without EMA) the average starts afresh from the current weights.
        state.ema.load_state_dict(payload["state_dict"], int(payload.get("ema_updates", 0)))
    log.info(
        "training %s (%d parameters) on %d slices / %d cases, validating on %d slices / %d cases, device %s, amp %s, "
        "%d process(es) of %d slices per step",
        cfg.model, count_parameters(model), len(train_set), len(train_set.case_ids), len(val_set),
        len(val_set.case_ids), device, state.amp_dtype or "off", place.world_size, cfg.batch_size,
    )
    for epoch in range(start_epoch, cfg.epochs + 1):
        row, pred = state.run_epoch(epoch, progress)
        if not place.is_main:
            distributed.barrier(place)
            continue
        history.append(row)
        improved = row["val_dice"] > best["val_dice"]
        if improved:
            post = choose_postprocess(pred, val_set, model_config.num_classes, data.get("val_voxel_ml"))
            best = {"epoch": epoch, "val_dice": row["val_dice"], "postprocess": post}
            state.save(out / "best.pt", epoch, history, best, with_optimizer=False, postprocess=post)
        state.save(out / "last.pt", epoch, history, best, with_optimizer=True)
        write_records(out, cfg, spec, model_config, count_parameters(model), history, best, data["split"])
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val Dice %.4f%s  (%.0f s)",
            epoch, cfg.epochs, row["train_loss"], row["val_loss"], row["val_dice"], "  *best" if improved else "", row["seconds"],
        )
        if on_epoch is not None:
            on_epoch(row)
        distributed.barrier(place)
    return {"best": best, "history": history, "out": str(out), "split": data["split"]}


def _resume(path: Path, model, optimizer, model_config: ModelConfig, spec: PreprocessSpec, device) -> dict[str, Any]:
    """Check ``path`` fits this run, load its training weights and optimiser state; returns it."""
    payload = read_checkpoint(path)
    saved = ModelConfig.from_dict(payload["model"])
    if saved != model_config:
        raise CheckpointError(f"cannot resume {path}: it is from a different model config ({', '.join(saved.differences(model_config))})")
    if PreprocessSpec.from_dict(payload["spec"]) != spec:
        raise CheckpointError(f"cannot resume {path}: it was trained with another PreprocessSpec")
    if "optimizer" not in payload:
        raise CheckpointError(f"cannot resume from {path}: it holds no optimiser state (use last.pt)")
    # state_dict holds the weights that are validated and exported (the EMA when it is on);
    # train_state_dict the optimiser's own weights, which training continues from.
    model.load_state_dict(payload.get("train_state_dict", payload["state_dict"]))
    model.to(device)
    optimizer.load_state_dict(payload["optimizer"])
    return payload


class _LoopState:
    """What one epoch needs; keeps ``train`` short."""

    def __init__(self, cfg, model, model_config, spec, optimizer, device, train_set, val_set, split, out,
                 sampler: TrainSampler, place: ProcessPlace) -> None:
        self.cfg, self.model, self.model_config, self.spec = cfg, model, model_config, spec
        self.optimizer, self.device, self.train_set, self.val_set = optimizer, device, train_set, val_set
        self.split, self.out, self.sampler, self.place = split, out, sampler, place
        # The replica that trains (DDP in several processes); ``model`` shares its weights and
        # is what validation, the EMA and checkpoints see.
        self.replica = distributed.wrap_model(model, place, device, cfg.sync_bn)
        self.loss_fn = build_loss(cfg, pool_sums=distributed.global_sum if place.distributed else None)
        self.val_loss_fn = build_loss(cfg)
        self.augment = (BatchAugmenter(spec, AugmentConfig(p=cfg.augment_p))
                        if cfg.augment and cfg.augment_p > 0 else None)
        self.amp_dtype = autocast_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16 and device.type == "cuda")
        self.steps_per_epoch = sampler.steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup = max(1, int(cfg.warmup_epochs * self.steps_per_epoch))
        self.ema = (WeightEMA(model, ema_decay(cfg.ema_epochs * self.steps_per_epoch))
                    if cfg.ema_epochs > 0 else None)

    @property
    def eval_model(self):
        """The weights that are validated and saved: the moving average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def run_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        from tqdm import tqdm

        cfg, started = self.cfg, time.perf_counter()
        gen = torch.Generator().manual_seed(distributed.augment_seed(cfg.seed, epoch, self.place.rank))
        self.replica.train()
        losses = []
        batches = self.sampler.batches(epoch)
        bar = tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not progress, unit="batch")
        for i, idx in zip(bar, batches):
            loss = self._step(idx, gen, (epoch - 1) * self.steps_per_epoch + i)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}")
        bar.close()
        train_loss = distributed.mean_over_processes(float(np.mean(losses)), self.device)
        if not self.place.is_main:
            return {"epoch": epoch, "train_loss": train_loss}, None
        classes = cfg.class_names
        val = validate(self.eval_model, self.val_set, len(classes), self.device, self.autocast, self.val_loss_fn)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_dice": val["dice"],
            **{f"val_dice_{name}": d for name, d in zip(classes[1:], val["per_class"])},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
        }
        return row, val["pred"]

    def _step(self, idx: np.ndarray, gen: torch.Generator, step: int) -> float:
        images = torch.from_numpy(self.train_set.images[idx])
        labels = torch.from_numpy(self.train_set.labels[idx]).long()
        if self.augment is not None:
            images, labels = self.augment(images, labels, gen)
        images = images.to(self.device, memory_format=torch.channels_last)
        labels = labels.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.total_steps, self.warmup, self.cfg.lr)
        with self.autocast():
            logits = self.replica(images)
        loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return float(loss.detach())

    def save(self, path: Path, epoch: int, history: list, best: dict, with_optimizer: bool, **more: Any) -> None:
        extra: dict[str, Any] = {
            **more,
            "epoch": epoch,
            "history": history,
            "best": best,
            "train_config": self.cfg.to_dict(),
            "split": self.split,
            "label_values": self.cfg.labels,
            "recipe": self.cfg.recipe,
        }
        if with_optimizer:
            extra["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                extra["train_state_dict"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                extra["ema_updates"] = self.ema.updates
        save_checkpoint(path, self.eval_model, self.model_config, self.spec, self.cfg.class_names, **extra)
