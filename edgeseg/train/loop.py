"""The training loop: epochs of augmented batches, validation Dice, checkpoints, metrics."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseg.atomic import folder_lock
from edgeseg.data.store import StoreCases
from edgeseg.errors import EdgesegError
from edgeseg.models import ModelConfig, build_model, count_parameters
from edgeseg.models.complexity import check_trainable_here
from edgeseg.progress import progress_bar
from edgeseg.stopping import stop_at_checkpoints
from edgeseg.train.augment import AugmentConfig, BatchAugmenter
from edgeseg.models.checkpoint import save_checkpoint
from edgeseg.train.config import MEMORY_FORMATS, TrainConfig, build_model_config, build_spec
from edgeseg.train import distributed
from edgeseg.train.determinism import determinism_record, deterministic_mode, prepare_cublas
from edgeseg.train.distributed import ProcessPlace, ShardedShuffle, TrainSampler
from edgeseg.train.ema import WeightEMA, ema_decay
from edgeseg.train.losses import build_loss
from edgeseg.train.memory_format import choose_memory_format, to_memory_format, torch_format
from edgeseg.train.precision import autocast_dtype
from edgeseg.train.records import write_records
from edgeseg.train.run_data import check_trainable, data_record, prepare
from edgeseg.train.run_folder import busy_message, check_resumable, check_same_rounding, check_start
from edgeseg.train.schedule import lr_at
from edgeseg.train.streaming import EpochBatches, ForegroundBatchSampler, default_workers, make_train_loader
from edgeseg.train.validate import CasePredictions, choose_postprocess, validate, validation_voxel_ml

log = logging.getLogger("edgeseg.train")


SamplerFactory = Callable[[StoreCases, ProcessPlace, TrainConfig], TrainSampler]


def shuffled_slices(train_set: StoreCases, place: ProcessPlace, cfg: TrainConfig) -> TrainSampler:
    """Every training slice once per epoch, shuffled, shared across processes."""
    return ShardedShuffle(len(train_set), cfg.batch_size, place.rank, place.world_size, cfg.seed)


def foreground_batches(train_set: StoreCases, place: ProcessPlace, cfg: TrainConfig) -> TrainSampler:
    """The default sampler: ``cfg.foreground_share`` of every batch from slices that hold each
    class in turn, the rest uniform (train/streaming.py), as many steps as uniform shuffling
    takes and the same number on every process."""
    steps = ShardedShuffle(len(train_set), cfg.batch_size, place.rank, place.world_size, cfg.seed).steps_per_epoch
    present = train_set.store.present[train_set.rows]
    return ForegroundBatchSampler(np.arange(len(train_set)), present, cfg.batch_size, steps * place.world_size,
                                  cfg.foreground_share, cfg.seed, place.rank, place.world_size)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, on_epoch: Callable | None = None,
          make_sampler: SamplerFactory = foreground_batches, overwrite: bool = False) -> dict[str, Any]:
    """Train a model as ``cfg`` says; writes best.pt, last.pt, metrics and curves under cfg.out.

    With ``resume``, training continues from ``cfg.out/last.pt`` (same model, spec and data),
    restoring weights, optimiser state, history and the epoch counter. A folder holding a
    training is refused without ``resume`` or ``overwrite`` (:func:`check_start`). Started by
    torchrun, each process trains a DDP replica on its share of every batch (``make_sampler``
    gives each its share); each validates its share of the validation cases;
    rank 0 alone writes, and only its result holds the history. ``cfg.threads`` holds for this
    call only: torch's thread count is the caller's again when it returns.
    """
    place = distributed.place_from_env()
    threads = torch.get_num_threads()
    if cfg.deterministic:  # before the device starts: cuBLAS takes its workspace setting when CUDA first runs
        prepare_cublas()
    device = distributed.start(place, cfg.sync_bn)
    # one training per run folder: a second one (train, cv or sweep) would write over its checkpoints
    busy = busy_message(cfg.out)
    # refused before its first epoch (settings the data cannot train, an operation --deterministic
    # cannot run), the folder this call made (its slice store at most) goes, as for any bad input
    guard = (folder_lock(cfg.out, ".training.lock", busy, discard_on=EdgesegError, keep="last.pt")
             if place.is_main else contextlib.nullcontext())
    try:
        with guard, deterministic_mode(cfg.deterministic):
            if place.is_main:  # under the lock: another process may be writing the folder's last.pt
                check_start(cfg.out, resume, overwrite)
            return _train(cfg, resume, progress and place.is_main, on_epoch, make_sampler, place, device)
    except RuntimeError:  # torch's own errors, a failed collective (gloo, NCCL) among them
        if place.distributed:
            distributed.await_stop_after_failed_peer()
        raise
    finally:
        torch.set_num_threads(threads)
        distributed.stop(place)


def _train(cfg, resume, progress, on_epoch, make_sampler, place, device) -> dict[str, Any]:
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_config = build_model_config(cfg)
    amp = autocast_dtype(cfg.amp, device)  # 16-bit autocast keeps its activations in 2 bytes a value
    check_trainable_here(model_config, cfg.size, cfg.batch_size, value_bytes=4 if amp is None else 2,
                         device_memory=torch.cuda.get_device_properties(device).total_memory
                         if device.type == "cuda" else None)
    model = build_model(model_config)
    model.check_input_size(cfg.size, cfg.size)
    spec = build_spec(cfg)
    model.to(device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, Any]] = []
    start_epoch, best = 1, {"epoch": 0, "val_dice": -1.0}
    # A checkpoint that cannot be resumed is refused before the data is read.
    payload = _resume(out / "last.pt", model, optimizer, device, cfg) if resume else None
    if payload is not None and cfg.deterministic:  # auto is channels-last there, unprobed (memory_format_for)
        check_same_rounding(out / "last.pt", payload, {
            "threads": torch.get_num_threads(), "amp": str(amp).removeprefix("torch.") if amp else "off",
            "memory_format": "channels-last" if cfg.memory_format == "auto" else cfg.memory_format})
    if payload is not None:
        start_epoch, history, best = int(payload["epoch"]) + 1, list(payload["history"]), dict(payload["best"])
    # Rank 0 builds (or checks) the slice store first; the other processes then only read it.
    if place.distributed and not place.is_main:
        distributed.barrier(place)
    data = prepare(cfg, progress)
    if place.distributed and place.is_main:
        distributed.barrier(place)
    train_set, val_set = data["train"], data["val"]
    check_trainable(cfg, data, payload, place.world_size)
    if place.is_main:  # after the checks above: a refused training prints its error alone
        log.info("%s", data["store"].describe())
    if place.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:  # what check_start let through is trained again: the last run's checkpoints go
            for name in ("last.pt", "best.pt"):
                (out / name).unlink(missing_ok=True)
    sampler = make_sampler(train_set, place, cfg)
    layout = memory_format_for(cfg, model, model_config, device, place, payload)
    to_memory_format(model, optimizer, layout["chosen"])
    state = _LoopState(cfg, model, model_config, spec, optimizer, device, train_set, val_set, data["split"], out,
                       sampler, place, layout)
    state.provenance = _provenance(cfg, data, payload, state, start_epoch)
    state.training_fov = data["training_fov"]  # of the run's training cases; --resume trains on the same ones
    if payload is not None:
        state.restore(payload)
    log.info(
        "training %s (%d parameters) on %d slices / %d cases, validating on %d slices / %d cases, device %s, amp %s, "
        "%d process(es) of %d slices per step, memory format %s",
        cfg.model, count_parameters(model), len(train_set), len(train_set.case_ids), len(val_set),
        len(val_set.case_ids), device, state.amp_dtype or "off", place.world_size, cfg.batch_size,
        layout["chosen"],
    )
    try:
        best = _epochs(state, start_epoch, history, best, data, progress, on_epoch)
    finally:
        # A SIGTERM is taken after this, not inside it: torchrun's, sent once another process
        # died, landed in the loader's shutdown, which was left half done (its workers' semaphores
        # leaked) with Python's "Exception ignored" traceback.
        with stop_at_checkpoints():
            state.val_predictions.remove()
            # Dropping the loader ends its persistent workers now, each through its own exit, which
            # removes the pymp-* folder it made in TMPDIR; at interpreter exit multiprocessing
            # SIGTERMs them instead, and every worker's folder was left behind.
            state.loader = None
    return {"best": best, "history": history, "out": str(out), "split": data["split"]}


def _epochs(state: "_LoopState", start_epoch: int, history: list, best: dict, data: dict, progress: bool,
            on_epoch: Callable | None) -> dict[str, Any]:
    """Train and validate epochs ``start_epoch..cfg.epochs``; rank 0 appends to ``history`` and
    writes the checkpoints and records. Returns the best epoch's record."""
    cfg, place, out, val_set, model_config = state.cfg, state.place, state.out, state.val_set, state.model_config
    with stop_at_checkpoints():  # a SIGTERM stops between batches, never inside a step, a save or a plot
        for epoch in range(start_epoch, cfg.epochs + 1):
            distributed.check_stop_together(place, state.device)
            row, pred = state.run_epoch(epoch, progress)
            _check_finite_weights(state.model, epoch, row, out)
            # rank 0's comparison for all: each process scores its own validation cases of the choice
            improved = bool(distributed.from_rank0(int(row["val_dice"] > best["val_dice"]), place, state.device))
            if improved:
                post = choose_postprocess(pred, val_set, model_config.num_classes, data.get("val_voxel_ml"), place)
                best = {"epoch": epoch, "val_dice": row["val_dice"], "postprocess": post}
            if not place.is_main:
                distributed.barrier(place)
                continue
            history.append(row)
            if improved:
                state.save(out / "best.pt", epoch, history, best, with_optimizer=False, postprocess=best["postprocess"])
            state.save(out / "last.pt", epoch, history, best, with_optimizer=True)
            write_records(out, cfg, state.spec, model_config, count_parameters(state.model), history, best, data["split"],
                          memory_format=state.layout, processes=place.world_size, provenance=state.provenance)
            log.info(
                "epoch %d/%d  train loss %.4f  val loss %.4f  val Dice %.4f%s  (%.0f s, validation %.1f s)", epoch, cfg.epochs,
                row["train_loss"], row["val_loss"], row["val_dice"], "  *best" if improved else "", row["seconds"], row["val_seconds"],
            )
            if on_epoch is not None:
                on_epoch(row)
            distributed.barrier(place)
        return best


def _provenance(cfg: TrainConfig, data: dict, payload: dict | None, state: "_LoopState", start_epoch: int) -> dict:
    """The checkpoint's record of how it was made: the data by content, and one entry per session
    of the run (a resumed run adds one), each with its command, software, machine and the settings
    that change float rounding but may change on --resume (threads, precision, layout, processes)."""
    from edgeseg.report.provenance import environment

    sessions = list(((payload or {}).get("provenance") or {}).get("sessions") or [])
    sessions.append({**environment(), "from_epoch": start_epoch, "threads": torch.get_num_threads(),
                     "amp": str(state.amp_dtype).removeprefix("torch.") if state.amp_dtype else "off",
                     "memory_format": state.layout["chosen"], "processes": state.place.world_size,
                     "workers": state.workers, "determinism": determinism_record()})
    return {"seed": cfg.seed, "data": data_record(cfg, data), "sessions": sessions}


def _check_finite_weights(model, epoch: int, row: dict[str, Any], out: Path) -> None:
    """Stop a run whose weights hold NaN or inf: every later epoch would train on to the end and
    report NaN. Checked before the epoch's checkpoints are written, so last.pt keeps the last
    finite weights. (A single inf loss that the fp16 scaler skips leaves the weights finite.)"""
    if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return
    kept = f"{out}/last.pt keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
    raise EdgesegError(f"training diverged in epoch {epoch} (train loss {row['train_loss']:.4g}): the weights hold "
                       f"NaN or infinite values; {kept}; train again with a lower --lr or --weight-decay")


def memory_format_for(cfg: TrainConfig, model, model_config: ModelConfig, device, place: ProcessPlace,
                      payload: dict[str, Any] | None = None) -> dict[str, Any]:
    """The memory format to train in (train/memory_format.py), decided by rank 0 and the same on
    every process: ``cfg.memory_format``, or with "auto" the resumed checkpoint's when it was
    trained on this machine, else rank 0's probe. The record names the machine, for a resume."""
    from edgeseg.runtime.machine import machine_signature

    machine, record = machine_signature(), {"requested": cfg.memory_format, "chosen": "channels-last"}
    if place.is_main and cfg.deterministic and cfg.memory_format == "auto":
        # the probe's timings, and so its choice, follow the machine's load
        record = {"requested": "auto", "chosen": "channels-last", "reason": "not probed: --deterministic"}
    elif place.is_main:
        record = choose_memory_format(cfg.memory_format, model, cfg.batch_size, cfg.size, model_config.num_classes,
                                      device, autocast_dtype(cfg.amp, device),
                                      kept=(payload or {}).get("memory_format"), machine=machine)
        if "seconds_per_pass" in record:
            log.info("memory format probe (s per forward + backward): %s; training %s", "; ".join(
                f"{name} {' '.join(f'{t:.2f}' for t in times)}" for name, times in record["seconds_per_pass"].items()),
                record["chosen"])
    concrete = MEMORY_FORMATS[1:]
    record["chosen"] = concrete[distributed.from_rank0(concrete.index(record["chosen"]), place, device)]
    return {**record, "machine": machine}


def _resume(path: Path, model, optimizer, device, cfg: TrainConfig) -> dict[str, Any]:
    """Check ``path`` fits this run, load its training weights and optimiser state; returns it."""
    payload = check_resumable(path, cfg)
    # state_dict holds the weights that are validated and exported (the EMA when it is on);
    # train_state_dict the optimiser's own weights, which training continues from.
    model.load_state_dict(payload.get("train_state_dict", payload["state_dict"]))
    model.to(device)
    optimizer.load_state_dict(payload["optimizer"])
    return payload


class _LoopState:
    """What one epoch needs; keeps ``train`` short."""

    def __init__(self, cfg, model, model_config, spec, optimizer, device, train_set, val_set, split, out,
                 sampler: TrainSampler, place: ProcessPlace, layout: dict[str, Any] | None = None) -> None:
        self.cfg, self.model, self.model_config, self.spec = cfg, model, model_config, spec
        # The memory format record (memory_format_for) and its torch format.
        self.layout = layout or {"requested": "channels-last", "chosen": "channels-last"}
        self.memory_format = torch_format(self.layout["chosen"])
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
        # fp16 gradients underflow without loss scaling on any device; bf16 has float32's range
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.steps_per_epoch = sampler.steps_per_epoch
        # Batches are read from the slice store and augmented in DataLoader workers.
        self.batches = EpochBatches(sampler, train_set.rows, cfg.seed, place.rank)
        self.workers = default_workers() if cfg.workers < 0 else cfg.workers
        self.loader = make_train_loader(train_set.store, self.batches, self.augment, self.workers, device)
        self.provenance: dict[str, Any] = {}
        self.training_fov: dict[str, Any] | None = None
        self.total_steps = self.steps_per_epoch * cfg.epochs
        # capped where the product would overflow int(): any warm-up that long is all warm-up
        self.warmup = max(1, int(min(cfg.warmup_epochs * self.steps_per_epoch, 2.0 ** 62)))
        self.ema = (WeightEMA(model, ema_decay(cfg.ema_epochs * self.steps_per_epoch))
                    if cfg.ema_epochs > 0 else None)
        # The epoch's validation predictions, one file per case, until the post-processing choice
        # has read them: validation memory stays one case whatever the number of cases. Rank 0's
        # go to the run (a killed run's leftover is cleared), the other processes' to a
        # temporary folder of their own (the run folder may not be on their machine).
        folder = None
        if out is not None:
            folder = Path(out) / ".validation" if place.is_main else Path(tempfile.mkdtemp(prefix="edgeseg-validation-"))
        self.val_predictions = CasePredictions(folder)
        self.val_predictions.remove()

    def restore(self, payload: dict[str, Any]) -> None:
        """What a resumed run continues from besides the weights and the optimiser (``_resume``):
        the moving average and the fp16 loss scale, each where this session uses one."""
        if self.ema is not None:
            # The EMA weights are the checkpoint's state_dict; without a saved update count (a
            # checkpoint trained without EMA) the average starts afresh from the current weights.
            self.ema.load_state_dict(payload["state_dict"], int(payload.get("ema_updates", 0)))
        if self.scaler.is_enabled() and payload.get("grad_scaler"):
            # Without it the scale would start again at 2**16 and back off through skipped steps.
            self.scaler.load_state_dict(payload["grad_scaler"])

    @property
    def eval_model(self):
        """The weights that are validated and saved: the moving average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def run_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        cfg, started = self.cfg, time.perf_counter()
        self.batches.set_epoch(epoch)
        self.replica.train()
        losses = []
        with progress_bar(self.loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", shown=progress) as bar:
            for i, (images, labels) in enumerate(bar):
                distributed.check_stop_together(self.place, self.device)
                loss = self._step(images, labels, (epoch - 1) * self.steps_per_epoch + i)
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
        train_loss = distributed.mean_over_processes(float(np.mean(losses)), self.device)
        classes = cfg.class_names
        # Every process validates its share of the cases with rank 0's weights (those saved), and
        # all take a SIGTERM together between rounds of cases.
        validating = time.perf_counter()
        distributed.same_state_as_rank0(self.eval_model, self.place)
        val = validate(self.eval_model, self.val_set, len(classes), self.device, self.autocast, self.val_loss_fn,
                       self.memory_format, keep=self.val_predictions,
                       between_cases=lambda: distributed.check_stop_together(self.place, self.device), place=self.place)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val["loss"],
            "val_dice": val["dice"],
            **{f"val_dice_{name}": d for name, d in zip(classes[1:], val["per_class"])},
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - started,
            "val_seconds": time.perf_counter() - validating,
        }
        return row, val["pred"]

    def _step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> float:
        images = images.to(self.device, memory_format=self.memory_format, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
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
            "memory_format": self.layout,
            "provenance": self.provenance,
            "training_fov": self.training_fov,
        }
        if with_optimizer:
            extra["optimizer"] = self.optimizer.state_dict()
            if self.ema is not None:
                extra["train_state_dict"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
                extra["ema_updates"] = self.ema.updates
            if self.scaler.is_enabled():
                extra["grad_scaler"] = self.scaler.state_dict()
        save_checkpoint(path, self.eval_model, self.model_config, self.spec, self.cfg.class_names, **extra)
