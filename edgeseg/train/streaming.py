"""Streaming training batches from the slice store: foreground-aware sampling, DataLoader workers.

The sampler plans each epoch in the main process as a list of batches of global slice numbers;
each batch carries its own augmentation seed, so a worker that reads and augments it produces
the same tensors whatever the number of workers. A share of every batch
(``foreground_share``, nnU-Net uses a third) is drawn from the slices that contain each
foreground class in turn, the rest uniformly from all training slices, so slices without any
foreground are seen and small classes are not starved.

Sharding for multi-process training: every rank builds the same global plan from
``(seed, epoch)`` and takes the batches whose position ``k`` satisfies
``k % world_size == rank``, so ranks get disjoint positions of one plan. The uniform draws of an
epoch are a permutation without replacement, so two ranks see the same slice in their uniform
share only when an epoch draws more uniform slices than there are; foreground pools are cycled
through permutations too and repeat only where a class has fewer slices than its draws.
"""

from __future__ import annotations

import functools
import os
import threading
import time

from collections.abc import Iterator

import numpy as np
import torch

from edgeseg.data.store import SliceStore
from edgeseg.errors import EdgesegError
from edgeseg.staging import process_alive


def default_workers() -> int:
    """DataLoader workers when ``--workers`` is not given: one core stays with the training step."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class _Cycle:
    """Endless draws from ``pool``: successive random permutations of it."""

    def __init__(self, pool: np.ndarray, rng: np.random.Generator) -> None:
        self.pool, self.rng, self.order, self.at = pool, rng, np.zeros(0, np.int64), 0

    def draw(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.at >= len(self.order):
                self.order, self.at = self.rng.permutation(self.pool), 0
            take = self.order[self.at: self.at + n]
            out.append(take)
            self.at += len(take)
            n -= len(take)
        return np.concatenate(out) if out else np.zeros(0, np.int64)


class ForegroundBatchSampler(torch.utils.data.Sampler):
    """Yields ``(batch_seed, rows)`` per step: ``rows`` global slice numbers of one batch.

    Args:
        rows: the training slices (global slice numbers of the store).
        present: (N_store, C) bool, which classes each store slice contains.
        batch_size: slices per batch.
        steps: batches per epoch in the global plan (over all ranks).
        foreground_share: share of each batch drawn from slices containing a foreground class,
            the classes taking turns slot by slot; 0 samples uniformly only.
        seed: base seed; with :meth:`set_epoch` it fixes the plan and the augmentation.
        rank, world_size: this process's shard of the plan (see the module docstring).
    """

    def __init__(self, rows: np.ndarray, present: np.ndarray, batch_size: int, steps: int,
                 foreground_share: float = 1 / 3, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0.0 <= foreground_share <= 1.0:
            raise EdgesegError(f"foreground share must be in [0, 1], got {foreground_share}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise EdgesegError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if len(rows) == 0:
            raise EdgesegError("no training slices to sample from")
        self.rows = np.asarray(rows, np.int64)
        self.pools = [self.rows[present[self.rows, c]] for c in range(1, present.shape[1])]
        self.pools = [pool for pool in self.pools if len(pool)]
        self.batch_size, self.steps, self.share = int(batch_size), int(steps), float(foreground_share)
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose plan the next iteration yields (as DistributedSampler does)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(range(self.rank, self.steps, self.world_size))

    def global_plan(self) -> list[tuple[int, np.ndarray]]:
        """Every batch of this epoch over all ranks, in order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        uniform = _Cycle(self.rows, rng)
        pools = [_Cycle(pool, rng) for pool in self.pools]
        n_fg = int(round(self.share * self.batch_size)) if pools else 0
        plan, turn = [], 0
        for _ in range(self.steps):
            counts = np.zeros(len(pools), int)
            for _ in range(n_fg):
                counts[turn % len(pools)] += 1
                turn += 1
            parts = [pool.draw(int(n)) for pool, n in zip(pools, counts)]
            parts.append(uniform.draw(self.batch_size - n_fg))
            plan.append((int(rng.integers(2**62)), np.sort(np.concatenate(parts))))
        return plan

    def __iter__(self):
        plan = self.global_plan()
        return iter(plan[self.rank:: self.world_size])

    @property
    def steps_per_epoch(self) -> int:
        """This process's batches per epoch (the training loop's sampler interface)."""
        return len(self)

    def batches(self, epoch: int) -> Iterator[np.ndarray]:
        """This process's batches of ``epoch``, as slice numbers (``rows``) only."""
        self.set_epoch(epoch)
        for _, rows in self:
            yield rows


class EpochBatches(torch.utils.data.Sampler):
    """The DataLoader's view of a training sampler: for the epoch set by :meth:`set_epoch`, yields
    ``(augmentation seed, store rows)`` per batch, mapping the sampler's indices into the training
    cases (``0..len-1``) to the store's slice numbers ``rows``. The seed follows (run seed, epoch,
    rank, step), so a resumed run augments exactly as an uninterrupted one, on any worker count.
    """

    def __init__(self, sampler, rows: np.ndarray, seed: int, rank: int = 0) -> None:
        self.sampler, self.rows = sampler, np.asarray(rows, np.int64)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.sampler.steps_per_epoch)

    def __iter__(self):
        for step, idx in enumerate(self.sampler.batches(self.epoch)):
            seed = int(np.random.default_rng([self.seed, self.epoch, self.rank, step]).integers(2**62))
            yield seed, np.sort(self.rows[np.asarray(idx, np.int64)])


class StoreBatches(torch.utils.data.Dataset):
    """Reads one planned batch from the store and augments it; indexed by the sampler's items."""

    def __init__(self, store: SliceStore, augment=None) -> None:
        self.store, self.augment = store, augment

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        batch_seed, rows = item
        images, labels = self.store.take(rows)
        images, labels = torch.from_numpy(images), torch.from_numpy(labels).long()
        if self.augment is not None:
            images, labels = self.augment(images, labels, torch.Generator().manual_seed(batch_seed))
        return images, labels


def make_train_loader(store: SliceStore, sampler: ForegroundBatchSampler, augment, workers: int,
                      device: torch.device) -> torch.utils.data.DataLoader:
    """A DataLoader over planned batches: ``workers`` processes read and augment them ahead of the
    training step; pinned memory on CUDA so host-to-device copies overlap."""
    if workers < 0:
        raise EdgesegError(f"--workers must be >= 0, got {workers}")
    return torch.utils.data.DataLoader(
        StoreBatches(store, augment), sampler=sampler, batch_size=None, num_workers=workers,
        # Workers start from a clean forkserver process, never by forking this one: a process
        # that already runs thread pools (OpenMP, an inference engine) can leave a forked child
        # holding a lock no thread will release, and the loader then waits forever.
        multiprocessing_context="forkserver" if workers > 0 else None,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        worker_init_fn=functools.partial(end_with, os.getpid()) if workers > 0 else None,
    )


def end_with(training_pid: int, worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker ends itself once the training process is gone.

    PyTorch's own worker watchdog compares ``os.getppid()`` with the parent the worker started
    under, which is the forkserver here, not the training process: a training killed with
    SIGKILL would leave its workers (and the forkserver above them) running for good."""
    threading.Thread(target=_watch, args=(training_pid,), daemon=True, name="edgeseg-training-watch").start()


def _watch(pid: int, every: float = 0.5) -> None:
    while process_alive(pid):
        time.sleep(every)
    os._exit(0)
