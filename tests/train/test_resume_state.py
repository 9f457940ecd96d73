"""What --resume continues besides weights and optimiser: the fp16 loss scale. fp16 autocast
trains with a GradScaler on the CPU too, so its save and restore are exercised here for real."""

import shutil
from pathlib import Path

import pytest
import torch

from edgeseg.errors import CheckpointError
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train.loop import train
from edgeseg.train.run_data import prepare

from .test_training import tiny


class _Stop(Exception):
    """Raised from the epoch callback to interrupt a run, as a crash or Ctrl-C would."""


def _stop_after(epoch):
    def check(row):
        if row["epoch"] == epoch:
            raise _Stop
    return check


def _fp16(tmp_path, name, **kw):
    return tiny(tmp_path, out=str(tmp_path / name), amp="fp16", threads=1, workers=0, memory_format="channels-last",
                **kw)


def _steps_per_epoch(cfg) -> int:
    return -(-len(prepare(cfg, False)["train"]) // cfg.batch_size)


def _rewrite_scaler(last: Path, **state) -> None:
    payload = torch.load(last, weights_only=True)
    payload["grad_scaler"] = {**payload["grad_scaler"], **state}
    torch.save(payload, last)


@pytest.fixture(scope="module")
def fp16_runs(tmp_path_factory):
    """A 4-epoch fp16 run, uninterrupted, and the same run stopped after epoch 2 and resumed."""
    tmp = tmp_path_factory.mktemp("fp16")
    whole = train(_fp16(tmp, "whole", epochs=4), progress=False)
    with pytest.raises(_Stop):
        train(_fp16(tmp, "resumed", epochs=4), progress=False, on_epoch=_stop_after(2))
    stopped = read_checkpoint(tmp / "resumed" / "last.pt")
    resumed = train(_fp16(tmp, "resumed", epochs=4), resume=True, progress=False)
    return tmp, whole, stopped, resumed


def test_resumed_fp16_run_continues_the_loss_scale_and_repeats_the_whole_run(fp16_runs):
    tmp, whole, stopped, resumed = fp16_runs
    a, b = read_checkpoint(tmp / "whole" / "last.pt"), read_checkpoint(tmp / "resumed" / "last.pt")
    steps = _steps_per_epoch(_fp16(tmp, "whole"))
    # no step of this run overflows: the scale stays at its start, 2**16, and the tracker counts
    # every step since the start; restored on resume, it runs on across it
    assert stopped["grad_scaler"] == {"scale": 2.0 ** 16, "growth_factor": 2.0, "backoff_factor": 0.5,
                                      "growth_interval": 2000, "_growth_tracker": 2 * steps}
    assert a["grad_scaler"]["_growth_tracker"] == 4 * steps
    assert b["grad_scaler"] == a["grad_scaler"]
    # the rest of what the run carries over: the history, the learning rate (a function of the
    # step count), the best epoch (a reset tracker would take epoch 3 as a new best) and the weights
    assert [(r["val_dice"], r["lr"]) for r in resumed["history"]] == [(r["val_dice"], r["lr"]) for r in whole["history"]]
    assert b["best"] == a["best"] and resumed["best"] == whole["best"]
    assert [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])] == []


def test_resume_trains_on_from_the_saved_scale(tmp_path):
    """A scale part-way to growing goes into the resumed run's scaler: two clean steps before
    the growth interval, the second step of the resumed epoch doubles it and restarts the count."""
    cfg = _fp16(tmp_path, "run", epochs=1)
    train(cfg, progress=False)
    _rewrite_scaler(Path(cfg.out) / "last.pt", scale=256.0, _growth_tracker=1998)
    train(_fp16(tmp_path, "run", epochs=2), resume=True, progress=False)
    scaler = read_checkpoint(Path(cfg.out) / "last.pt")["grad_scaler"]
    assert (scaler["scale"], scaler["_growth_tracker"]) == (512.0, _steps_per_epoch(cfg) - 2)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fp16-one")
    train(_fp16(tmp, "run", epochs=1), progress=False)
    return tmp / "run"


@pytest.mark.parametrize("state", [{"scale": 0.0}, {"scale": float("nan")}, {"scale": "big"}, {"growth_interval": 0},
                                   {"_growth_tracker": -1}, {"_growth_tracker": 2**40}, {"backoff_factor": 1.5}])
def test_a_bad_scaler_record_is_refused_before_training(one_epoch, tmp_path, state):
    shutil.copytree(one_epoch, tmp_path / "run")
    _rewrite_scaler(tmp_path / "run" / "last.pt", **state)
    with pytest.raises(CheckpointError, match="its grad_scaler record is not a loss scaler's state"):
        train(_fp16(tmp_path, "run", epochs=2), resume=True, progress=False)
