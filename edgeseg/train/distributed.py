"""Training in several processes with torchrun: process group, DDP wrapping, sharded sampling.

``torchrun --nproc-per-node N -m edgeseg train ...`` starts N copies of the command and tells
each its place in the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE). Each
process trains a DistributedDataParallel replica on its own share of every batch; gradients are
averaged across processes after each backward pass, so the weights stay identical everywhere.
NCCL carries the gradients between GPUs, gloo between CPU processes. Without those variables
training runs in one process exactly as before.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from edgeseg.errors import EdgesegError
from edgeseg.stopping import check_stop, stop_pending

# A rank that dies leaves the others waiting in a collective; give up after this long.
_TIMEOUT = datetime.timedelta(minutes=30)
# How long a process whose collective failed waits for torchrun's stop (its agent looks at the
# processes every 0.1 s and stops the others once one has died).
PEER_FAILURE_GRACE_S = 3.0


@dataclass(frozen=True)
class ProcessPlace:
    """Where this process stands in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs and writes checkpoints, metrics and curves."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def place_from_env(env: dict[str, str] | None = None) -> ProcessPlace:
    """Read the place torchrun gives this process; rank 0 of 1 when its variables are absent."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return ProcessPlace()
    try:
        place = ProcessPlace(
            rank=int(env.get("RANK", "0")),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
        )
    except ValueError:
        raise EdgesegError("RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (torchrun sets them)") from None
    if not 0 <= place.rank < place.world_size or not 0 <= place.local_rank < place.local_world_size:
        raise EdgesegError(f"rank {place.rank} of {place.world_size} (local {place.local_rank} of "
                           f"{place.local_world_size}) is not a valid place in a distributed run")
    return place


def available_slots(cuda: bool | None = None) -> tuple[int, str]:
    """How many training processes this machine takes: its GPUs on CUDA, else its CPU cores."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return torch.cuda.device_count(), "CUDA devices"
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1), "CPU cores"


def check_process_count(nproc: int, cuda: bool | None = None) -> None:
    """Refuse more processes on this machine than it has GPUs (on CUDA) or CPU cores."""
    slots, what = available_slots(cuda)
    if nproc < 1:
        raise EdgesegError(f"--nproc must be >= 1, got {nproc}")
    if nproc > slots:
        raise EdgesegError(f"--nproc {nproc} is more than the {slots} {what} of this machine; use --nproc {slots} or fewer")


def start(place: ProcessPlace, sync_bn: bool) -> torch.device:
    """Join the process group of a torchrun run (NCCL on CUDA, gloo on CPU); returns the device.

    On CUDA each process takes the GPU of its local rank. In one process nothing is started
    and the device is CUDA when present, else the CPU.
    """
    cuda = torch.cuda.is_available()
    if sync_bn and not cuda:
        raise EdgesegError("--sync-bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); on CPU each process "
                           "normalises its own share of the batch")
    if not place.distributed:
        return torch.device("cuda" if cuda else "cpu")
    check_process_count(place.local_world_size, cuda)
    device = torch.device("cuda", place.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=_TIMEOUT)
    return device


def stop(place: ProcessPlace) -> None:
    """Leave the process group (after the last collective of the run)."""
    if place.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_model(model: torch.nn.Module, place: ProcessPlace, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """The module that trains: ``model`` itself in one process, a DDP replica of it in several.

    ``model`` keeps its own parameters (DDP shares them), so it is what validation, the EMA
    and checkpoints use. DDP broadcasts rank 0's weights when it is built, which makes every
    replica start from the same weights whatever each process initialised or loaded.
    """
    if not place.distributed:
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def global_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over all processes, differentiably (the identity in one process).

    The loss's Dice term pools intersections and areas over the batch; summing them over the
    processes pools them over the whole global batch, so DDP's averaged gradient is the
    gradient of the loss of the union batch, not an average of per-process Dice values.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    # The functional collective carries autograd (its backward sums the gradients over the
    # processes); torch.distributed.nn.functional.all_reduce, which did, is deprecated.
    from torch.distributed._functional_collectives import all_reduce

    return all_reduce(x, "sum", torch.distributed.group.WORLD)


def mean_over_processes(value: float, device: torch.device) -> float:
    """The mean of a per-process number over all processes (the number itself in one process)."""
    if not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()


def check_stop_together(place: ProcessPlace, device: torch.device) -> None:
    """``stopping.check_stop`` for all processes at once: each says whether it holds a SIGTERM,
    and all stop (raise ``Terminated``) when any does. torchrun sends SIGTERM to each process in
    turn, so one may see it a step before another; a process that stopped alone would leave the
    others waiting in the next step's gradient all-reduce (for NCCL's whole timeout). Every
    process calls this at the same points of the loop; in one process it is ``check_stop``."""
    if not place.distributed:
        check_stop()
        return
    flag = torch.tensor([1 if stop_pending() else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    check_stop(elsewhere=bool(flag.item()))


def await_stop_after_failed_peer(grace_s: float = PEER_FAILURE_GRACE_S) -> None:
    """Give torchrun's agent time to stop this process (raising ``Terminated``) after one of its
    collectives failed: when another process died (killed, out of memory), gloo and NCCL fail
    the collectives of the rest with a connection error whose traceback only repeats, once per
    process, what torchrun and the command say about the one that died. Returns when no stop
    comes: the failure is this process's own, and is reported as such."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        check_stop()
        time.sleep(0.05)
    check_stop()


def barrier(place: ProcessPlace) -> None:
    """Wait for every process (after rank 0 wrote an epoch's files)."""
    if place.distributed:
        torch.distributed.barrier()


def same_state_as_rank0(module: torch.nn.Module, place: ProcessPlace) -> None:
    """Give ``module`` rank 0's parameters and buffers (nothing in one process). DDP keeps the
    parameters equal, but each process's last forward pass moved its own batch norm running
    statistics (and the EMA's average of them), and a process validating with those would
    score its cases with weights other than the ones rank 0 saves."""
    if not place.distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            held = tensor.detach().contiguous()  # a copy where the layout is channels-last
            torch.distributed.broadcast(held, src=0)
            if held.data_ptr() != tensor.data_ptr():
                tensor.copy_(held)


def gather_to_all(mine: dict, place: ProcessPlace) -> dict:
    """The union of every process's ``mine`` (results keyed by case), on every process; ``mine``
    itself in one process. Values travel pickled, so floats arrive bit for bit."""
    if not place.distributed:
        return mine
    parts: list = [None] * place.world_size
    torch.distributed.all_gather_object(parts, mine)
    return {key: value for part in parts for key, value in part.items()}


def from_rank0(value: int, place: ProcessPlace, device: torch.device) -> int:
    """Rank 0's ``value`` on every process (a choice rank 0 alone measured)."""
    if not place.distributed:
        return value
    held = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.broadcast(held, src=0)
    return int(held.item())


class TrainSampler(Protocol):
    """What the loop asks of a sampler: steps per epoch and this process's batches of an epoch.

    A sampler is built for one process (``rank`` of ``world_size``) and a run seed; for each
    epoch it yields the sample indices of this process's share of every step. The shares of the
    processes are disjoint within an epoch, and every process yields the same number of steps.
    """

    steps_per_epoch: int

    def batches(self, epoch: int) -> Iterator[np.ndarray]: ...


class ShardedShuffle:
    """Uniform shuffling of ``num_samples`` slices, each global batch split across processes.

    Every epoch draws one permutation from (seed, epoch), the same on every process. In one
    process batches are consecutive runs of it, as before: ``ceil(n / batch)`` steps, a
    trailing batch of one dropped (batch norm statistics of one slice are noise). With
    ``world_size`` processes a step takes ``world_size * batch_size`` consecutive slices and
    process ``rank`` the ``rank``-th run of ``batch_size`` of them, so the processes' shares are
    disjoint; an epoch is ``n // (world_size * batch_size)`` full steps (the remainder, a
    different random set each epoch, waits for the next one), or, when the data set is smaller
    than one global batch, one step that splits it as evenly as it goes.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise EdgesegError(f"rank {rank} is not a place among {world_size} processes")
        if num_samples < world_size:
            raise EdgesegError(f"{num_samples} training slices cannot be shared by {world_size} processes")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        n, step = num_samples, batch_size * world_size
        if world_size == 1:
            self.steps_per_epoch = max(1, n // step if n % step == 1 else -(-n // step))
        else:
            self.steps_per_epoch = max(1, n // step)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's permutation of all samples, identical on every process."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen).numpy()

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        order, b, w = self.order(epoch), self.batch_size, self.world_size
        if w > 1 and self.num_samples < b * w:
            yield np.sort(np.array_split(order, w)[self.rank])
            return
        for i in range(self.steps_per_epoch):
            start = i * b * w + self.rank * b
            yield np.sort(order[start : start + b])
