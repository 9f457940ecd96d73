"""Streaming batches from the slice store: foreground share per class, rank shards, reproducibility."""

from __future__ import annotations

import os

import numpy as np
import pytest
from edgeseg.data.store import StoreCases, open_slice_store
from edgeseg.errors import EdgesegError
from edgeseg.spec import PreprocessSpec
from edgeseg.train.streaming import ForegroundBatchSampler

SPEC = PreprocessSpec(window=(-200.0, 300.0), size=(32, 32))
LABELS = {"liver": [1], "kidney": [3]}  # class 1 liver, class 2 kidney


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_slice_store("phantom:cases=4,seed=1,size=48,slices=16", tmp_path_factory.mktemp("cache"), SPEC, LABELS)


def _holds(store, rows, cls):
    """Brute force on the stored labels: which of ``rows`` contain class ``cls``."""
    return np.array([(store.take([r])[1] == cls).any() for r in rows])


def test_each_batch_draws_its_share_from_every_class(store):
    rows = StoreCases(store, store.case_ids).rows
    assert (~_holds(store, rows, 1)).sum() >= 16 and (~_holds(store, rows, 2)).sum() >= 16, \
        "the phantom must have many liver-free and kidney-free slices"
    sampler = ForegroundBatchSampler(rows, store.present, batch_size=6, steps=30, foreground_share=1 / 3, seed=0)
    drawn = []
    for _, batch in sampler:
        assert len(batch) == 6
        assert _holds(store, batch, 1).sum() >= 1 and _holds(store, batch, 2).sum() >= 1
        drawn.extend(batch)
    # The uniform two thirds reach the slices with no foreground at all, as the default trains.
    background = ~(_holds(store, drawn, 1) | _holds(store, drawn, 2))
    free = ~(_holds(store, rows, 1) | _holds(store, rows, 2))
    assert free.sum() > 0 and background.sum() > 0.5 * free.mean() * (4 / 6) * len(drawn)
    # Batches of two, all foreground: one slot per class, so every batch holds both classes
    # (uniform pairs would miss one class in about a third of the batches).
    pairs = ForegroundBatchSampler(rows, store.present, batch_size=2, steps=40, foreground_share=1.0, seed=1)
    for _, batch in pairs:
        assert _holds(store, batch, 1).any() and _holds(store, batch, 2).any()


def test_no_share_samples_uniformly_and_sees_background_slices(store):
    rows = StoreCases(store, store.case_ids).rows
    sampler = ForegroundBatchSampler(rows, store.present, batch_size=8, steps=len(rows) // 8, foreground_share=0.0)
    drawn = np.concatenate([batch for _, batch in sampler])
    assert sorted(drawn) == sorted(rows), "one epoch without foreground share is a permutation"
    full = ForegroundBatchSampler(rows, store.present, batch_size=8, steps=10, foreground_share=1.0)
    for _, batch in full:
        assert (_holds(store, batch, 1) | _holds(store, batch, 2)).all()


def test_plan_is_reproducible_per_epoch_and_shards_into_disjoint_parts(store):
    rows = StoreCases(store, store.case_ids).rows
    make = lambda **kw: ForegroundBatchSampler(rows, store.present, 4, 12, 0.25, seed=7, **kw)  # noqa: E731
    one, again = make(), make()
    one.set_epoch(3), again.set_epoch(3)
    plan = list(one)
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(plan, again))
    again.set_epoch(4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(plan, again))
    shards = []
    for rank in range(3):
        shard = make(rank=rank, world_size=3)
        shard.set_epoch(3)
        shards.append(list(shard))
        assert len(shards[-1]) == len(shard) == 4
    # Rank r takes positions r, r+3, ...: together the ranks replay the plan exactly once.
    for k, (seed, batch) in enumerate(plan):
        got_seed, got_batch = shards[k % 3][k // 3]
        assert got_seed == seed and np.array_equal(got_batch, batch)
    uniform = [set(np.concatenate([b for _, b in s])) for s in
               [list(ForegroundBatchSampler(rows, store.present, 4, 12, 0.0, 7, rank=r, world_size=3)) for r in range(3)]]
    assert not (uniform[0] & uniform[1]) and not (uniform[1] & uniform[2]) and not (uniform[0] & uniform[2])


def test_bad_sampler_arguments_are_refused(store):
    with pytest.raises(EdgesegError, match="foreground share"):
        ForegroundBatchSampler(np.arange(4), store.present, 2, 2, foreground_share=1.5)
    with pytest.raises(EdgesegError, match="rank"):
        ForegroundBatchSampler(np.arange(4), store.present, 2, 2, rank=2, world_size=2)


WORKERS_CHECK = """
import sys

import numpy as np
import torch

from edgeseg.data.store import StoreCases, open_slice_store
from edgeseg.train.augment import AugmentConfig, BatchAugmenter
from edgeseg.train.streaming import ForegroundBatchSampler, make_train_loader
from tests.train.test_streaming import LABELS, SPEC

store = open_slice_store("phantom:cases=4,seed=1,size=48,slices=16", sys.argv[1], SPEC, LABELS)
rows = StoreCases(store, store.case_ids).rows
augment = BatchAugmenter(SPEC, AugmentConfig(p=0.9))
batches = {}
for workers in (0, 2):
    sampler = ForegroundBatchSampler(rows, store.present, 4, 5, seed=3)
    sampler.set_epoch(2)
    batches[workers] = list(make_train_loader(store, sampler, augment, workers, torch.device("cpu")))
assert len(batches[0]) == 5
for (x0, y0), (x2, y2) in zip(batches[0], batches[2]):
    torch.testing.assert_close(x0, x2, rtol=0, atol=0)
    assert torch.equal(y0, y2)
plain, _ = store.take(next(iter(sampler))[1])
assert not np.allclose(batches[0][0][0].numpy(), plain), "augmentation ran on the batch"
print("same batches")
"""


def test_workers_give_the_same_augmented_batches_as_the_main_process(store):
    """Run in a fresh interpreter: DataLoader worker processes (persistent, from a forkserver) and
    torch's SIGCHLD handler then end with that interpreter, not somewhere in the test process."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", WORKERS_CHECK, str(store.path.parent)], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert proc.returncode == 0 and "same batches" in proc.stdout, proc.stderr


@pytest.mark.parametrize("option, value, fragment", [("--workers", "-2", "-2 is not in the range x>=0"),
                                                      ("--foreground-share", "1.5", "foreground share must be in [0, 1]")])
def test_train_refuses_bad_streaming_options_in_one_line(option, value, fragment, tmp_path, assert_one_line_error):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "--out", str(tmp_path / "run"), option, value],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    assert_one_line_error(proc, fragment)


def _marked(mark: bytes) -> list[int]:
    """The processes whose environment holds ``mark`` (a training and everything it started)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/environ", "rb") as env:
                environment = env.read().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if mark in environment:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux /proc to find the processes")
def test_a_killed_training_leaves_no_worker_behind(tmp_path):
    """SIGKILL on a training with a loader worker: the worker (started through the forkserver, so
    PyTorch's parent watchdog cannot see the training end) and the forkserver end within seconds."""
    import signal
    import subprocess
    import sys
    import time
    import uuid

    mark = f"EDGESEG_TEST_MARK={uuid.uuid4().hex}".encode()
    key, value = mark.decode().split("=")
    proc = subprocess.Popen([sys.executable, "-m", "edgeseg", "train", "--data", "phantom:cases=4,seed=1,size=64,slices=8",
                             "--out", str(tmp_path / "run"), "--size", "64", "--base", "4", "--depth", "2", "--epochs", "500",
                             "--window=-200,300", "--workers", "1", "--quiet"],
                            env={**os.environ, key: value, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_marked(mark)) < 3 and time.monotonic() < deadline:  # training, forkserver, worker
            assert proc.poll() is None, "the training ended before its worker started"
            time.sleep(0.2)
        started = _marked(mark)
        assert len(started) >= 3, started
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _marked(mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _marked(mark)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"still running after the training was killed: {left}"
