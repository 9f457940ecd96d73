"""The data a run trains on: its slice store and split, and the checks that can refuse them.

Training runs them in each process; ``edgeseg train --nproc N`` runs them once more in the
command's own process before torchrun starts (:func:`check_launch`), so data a run cannot train
on is one line, not an error from every process followed by torchrun's report. The store that
check builds is the one the training processes then reuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeseg.atomic import folder_lock
from edgeseg.data import split_cases
from edgeseg.data.field_of_view import training_fov
from edgeseg.data.folds import fold_split
from edgeseg.data.store import StoreCases, open_slice_store
from edgeseg.data.volume import cases_sha256
from edgeseg.errors import CheckpointError, DataError, EdgesegError
from edgeseg.train.config import TrainConfig, build_spec
from edgeseg.train.run_folder import busy_message, check_resumable, check_start
from edgeseg.train.validate import validation_voxel_ml


def prepare(cfg: TrainConfig, progress: bool = False) -> dict[str, Any]:
    """Build or reuse the data's slice store, split it by case (or fold), and view the train and
    validation cases (images read from the store on demand)."""
    spec = build_spec(cfg)
    cache = cfg.cache or Path(cfg.out) / "slice-store"
    label_values = sorted({v for values in cfg.labels.values() for v in values})
    slice_options = {"case_pattern": cfg.case_pattern, "mask": cfg.mask, "label_values": label_values}
    store = open_slice_store(cfg.data, cache, spec, cfg.labels, cfg.intensity, progress=progress,
                             slice_options=slice_options)
    ids = store.case_ids
    if len(ids) < 2:
        raise DataError(f"{cfg.data} holds {len(ids)} case(s); training needs at least 2 (train and validation)")
    split = fold_split(ids, cfg.folds, cfg.fold, cfg.seed) if cfg.folds else split_cases(ids, cfg.fractions, cfg.seed)
    sets = {name: StoreCases(store, split[name]) for name in ("train", "val")}
    val_voxel_ml = validation_voxel_ml([store.geometry(c) for c in split["val"]], spec)
    fov = training_fov(store.geometry(c) for c in split["train"])  # the checkpoint's record (field_of_view.py)
    return {"split": split, "spec": spec, "store": store, **sets, "val_voxel_ml": val_voxel_ml,
            "training_fov": None if fov is None else fov.to_dict()}


def check_trainable(cfg: TrainConfig, data: dict[str, Any], payload: dict[str, Any] | None = None,
                    processes: int = 1) -> None:
    """Refuse ``data`` (from :func:`prepare`) that this run cannot train on: a resumed run
    (``payload``, its last.pt) whose data now splits into other cases, a class no training
    slice holds (a --labels value the data does not use: it trains on empty targets, and its
    validation Dice of empty against empty reads as a perfect 1.0), or fewer training slices
    than ``processes`` to share them."""
    if payload is not None and payload.get("split") and _split_cases(payload["split"]) != _split_cases(data["split"]):
        raise CheckpointError(f"cannot resume {Path(cfg.out) / 'last.pt'}: {cfg.data} splits into other cases than "
                              "the run was trained on (other data, or data changed); train into another --out")
    # same case ids, other content (a case re-exported, labels corrected): the split alone misses it
    recorded = ((payload or {}).get("provenance") or {}).get("data") or {}
    now = data_record(cfg, data)
    changed = sorted(c for c, digest in (recorded.get("case_sha256") or {}).items()
                     if now["case_sha256"].get(c, digest) != digest)
    if changed:
        raise CheckpointError(f"cannot resume {Path(cfg.out) / 'last.pt'}: {len(changed)} case(s) of {cfg.data} hold "
                              f"other images or labels than the run was trained on ({', '.join(changed[:3])}"
                              f"{', ...' if len(changed) > 3 else ''}); train into another --out")
    train_set = data["train"]
    if len(train_set) < processes:
        raise DataError(f"{cfg.data} gives {len(train_set)} training slice(s), fewer than the {processes} processes "
                        f"that would share them; use --nproc {len(train_set)} or fewer")
    held = train_set.store.present[train_set.rows].any(axis=0)
    absent = [f"{name} (value {'+'.join(map(str, cfg.labels[name]))})" for k, name in enumerate(cfg.labels, start=1)
              if not held[k]]
    if absent:
        raise DataError(f"no training slice of {cfg.data} holds {', '.join(absent)}; check --labels against the "
                        "label values the data uses (edgeseg data info)")


def data_record(cfg: TrainConfig, data: dict[str, Any]) -> dict[str, Any]:
    """What a run trained on, by content: the source, each case's content hash (as read, see
    :meth:`~edgeseg.data.volume.Volume.content_sha256`), one hash of them all and one per part of
    the split, so a data set on another machine can be checked against the run."""
    store = data["store"]
    hashes = store.case_hashes()
    return {"source": cfg.data, "sha256": cases_sha256(hashes),
            "split_sha256": {part: cases_sha256(store.case_hashes(list(ids))) for part, ids in data["split"].items()},
            "case_sha256": hashes}


def check_launch(cfg: TrainConfig, resume: bool, overwrite: bool, progress: bool = False, processes: int = 1) -> None:
    """Everything a training could refuse before its first epoch, checked in one process before
    torchrun starts several: the run folder (:func:`check_start`, and :func:`check_resumable`
    with ``resume``), then the data (:func:`prepare`, building the slice store the processes
    reuse, and :func:`check_trainable`). Held under the folder's training lock; refused, a folder
    this made goes again, as a single-process training leaves it."""
    with folder_lock(cfg.out, ".training.lock", busy_message(cfg.out), discard_on=EdgesegError, keep="last.pt"):
        check_start(cfg.out, resume, overwrite)
        payload = check_resumable(Path(cfg.out) / "last.pt", cfg) if resume else None
        check_trainable(cfg, prepare(cfg, progress), payload, processes)


def _split_cases(split: dict[str, Any]) -> dict[str, list[str]]:
    return {name: sorted(map(str, split.get(name) or [])) for name in ("train", "val", "test")}
