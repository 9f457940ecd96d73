"""The number of torch threads a training runs on: ``--threads`` holds for that training alone,
and the suite's test bundle names its own, so its weights do not follow the process it is built
in (at 2 threads the run is another: other best epoch, other masks)."""

import torch

from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train
from tests.conftest import BUNDLE_TRAINING

from .test_deterministic import _tensors


def _bundle_run(out, process_threads: int, **changes) -> dict:
    """The test bundle's training, two epochs of it (with ``changes``), in a process at
    ``process_threads``; returns its last.pt and the process's thread count after the call."""
    before = torch.get_num_threads()
    torch.set_num_threads(process_threads)
    try:
        train(TrainConfig(out=str(out), **{**BUNDLE_TRAINING, "epochs": 2, **changes}), progress=False)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    return {**read_checkpoint(out / "last.pt"), "threads_after": after}


def test_the_test_bundle_trains_alike_whatever_the_process_thread_count(tmp_path):
    one, two = (_bundle_run(tmp_path / f"at-{n}", n) for n in (1, 2))
    for key in ("state_dict", "optimizer"):
        a, b = _tensors(one[key]), _tensors(two[key])
        assert len(a) == len(b) > 0, key
        unequal = [i for i, (x, y) in enumerate(zip(a, b)) if not torch.equal(x, y)]
        assert not unequal, f"{key}: {len(unequal)} of {len(a)} tensors differ"
    assert [h["val_dice"] for h in one["history"]] == [h["val_dice"] for h in two["history"]]
    assert one["provenance"]["sessions"][0]["threads"] == two["provenance"]["sessions"][0]["threads"] == 1


def test_threads_hold_for_the_training_alone(tmp_path):
    # the process at 2 threads trains on 1 and is at 2 again afterwards: a later training (or the
    # test bundle built next in a test process) sees the process's count, not this run's
    run = _bundle_run(tmp_path / "run", 2, threads=1)
    assert run["provenance"]["sessions"][0]["threads"] == 1
    assert run["threads_after"] == 2
