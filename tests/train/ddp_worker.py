"""Run by test_distributed.py under ``torchrun --nproc-per-node 2``: one gradient, then training.

Also the tests' reference for validation: the run's validation functions in one process.

Each process records what the test checks afterwards: the sample indices its sampler gave it,
every file-system write it made (from Python's audit hooks, so nothing is replaced), and, on
rank 0, the gradient of one DDP step on a fixed shard of a fixed union batch.
"""

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from edgeseg.models import ModelConfig, build_model
from edgeseg.models.checkpoint import load_model
from edgeseg.train import distributed
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import foreground_batches, prepare, train
from edgeseg.train.losses import DiceCELoss, build_loss
from edgeseg.train.validate import choose_postprocess, validate

PHANTOM = "phantom:cases=5,seed=1,size=64,slices=10"
# The audit events that create, replace or remove a file, and which argument is its path.
WRITE_EVENTS = {"os.rename": 1, "os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "tempfile.mkstemp": 0,
                "shutil.copytree": 1, "shutil.rmtree": 0}
# The events whose path may be relative to a directory descriptor, and that argument's place.
DIR_FD = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 2}


def config(out: Path, epochs: int) -> TrainConfig:
    """The run the test also starts from the command line (same values as its options)."""
    return TrainConfig(data=PHANTOM, out=str(out), size=64, base=4, depth=2, epochs=epochs, batch_size=8, lr=5e-3,
                       window=(-200.0, 300.0), amp="off", fractions=(1.0 - 0.2 - 0.2, 0.2, 0.2), augment=False,
                       foreground_share=0.0, memory_format="channels-last")


def record_writes(writes: list) -> None:
    def hook(event, args):
        path = None
        if event == "open":
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                path = args[0]
        elif event in WRITE_EVENTS:
            path = args[WRITE_EVENTS[event]]
            fd = args[DIR_FD[event]] if event in DIR_FD and len(args) > DIR_FD[event] else None
            if isinstance(fd, int) and fd >= 0 and isinstance(path, (str, os.PathLike)):
                # shutil.rmtree removes entries by name relative to the folder it opened
                path = os.path.join(os.readlink(f"/proc/self/fd/{fd}"), path)
        if isinstance(path, (str, os.PathLike)):
            writes.append(os.path.abspath(path))

    sys.addaudithook(hook)


def gradient_of_one_step(cfg: TrainConfig, place, device, out: Path) -> None:
    """Rank r takes slices [8r, 8r+8) of the first 16 training slices; rank 0 saves the grads."""
    # As in the loop: rank 0 builds the slice store, the other rank then only reads it.
    if not place.is_main:
        distributed.barrier(place)
    train_set = prepare(cfg)["train"]
    if place.is_main:
        distributed.barrier(place)
    torch.manual_seed(cfg.seed)
    model = build_model(ModelConfig(num_classes=2, base=cfg.base, depth=cfg.depth)).to(memory_format=torch.channels_last)
    replica = distributed.wrap_model(model, place, device, sync_bn=False)
    rows = slice(8 * place.rank, 8 * place.rank + 8)
    x = torch.from_numpy(train_set.images[rows]).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(train_set.labels[rows]).long()
    DiceCELoss(pool_sums=distributed.global_sum)(replica(x), y).backward()
    if place.is_main:
        torch.save({name: p.grad for name, p in model.named_parameters()}, out / "grads.pt")


class RecordingSampler:
    """The loop's own sampler, noting each batch it hands out."""

    def __init__(self, inner, seen: dict) -> None:
        self.inner, self.seen, self.steps_per_epoch = inner, seen, inner.steps_per_epoch

    def batches(self, epoch):
        for idx in self.inner.batches(epoch):
            self.seen.setdefault(str(epoch), []).append(idx.tolist())
            yield idx


def one_process_validation(cfg, checkpoint: Path) -> tuple[dict, dict]:
    """validate() and choose_postprocess() of ``checkpoint``'s weights in this process (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        val_set = prepare(cfg)["val"]
        model, _ = load_model(checkpoint)
        model = model.to(memory_format=torch.channels_last)
        val = validate(model, val_set, 2, torch.device("cpu"), contextlib.nullcontext, build_loss(cfg))
        return val, choose_postprocess(val["pred"], val_set, 2)
    finally:
        torch.set_num_threads(threads)


def main(out: Path, epochs: int) -> None:
    writes: list[str] = []
    record_writes(writes)
    place = distributed.place_from_env()
    cfg = config(out / "run", epochs)
    device = distributed.start(place, sync_bn=False)
    gradient_of_one_step(cfg, place, device, out)
    seen: dict[str, list] = {}

    def snapshot_after_first_epoch(row):
        if row["epoch"] == 1:
            shutil.copytree(out / "run", out / "after1")

    train(cfg, progress=False, on_epoch=snapshot_after_first_epoch,
          make_sampler=lambda *args: RecordingSampler(foreground_batches(*args), seen))
    (out / f"rank{place.rank}.json").write_text(json.dumps({"batches": seen, "writes": writes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
