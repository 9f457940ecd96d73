"""bf16 autocast on CPU: what --amp asks for is what trains. The test session makes --amp auto
mean float32 on every CPU (tests/conftest.py), so bf16 is exercised here by name."""

import numpy as np
import torch

from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train.loop import train
from edgeseg.train.precision import autocast_dtype

from .test_training import tiny


def test_auto_is_float32_in_the_test_session_and_named_precisions_are_kept():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None
    assert autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16


def test_bf16_training_runs_under_autocast_and_learns(tmp_path):
    runs = {}
    for amp in ("off", "bf16"):
        cfg = tiny(tmp_path / amp, epochs=2, amp=amp, seed=0)
        result = train(cfg, progress=False)
        losses = [h["train_loss"] for h in result["history"]]
        assert all(np.isfinite(losses)), (amp, losses)
        runs[amp] = (losses, read_checkpoint(f"{cfg.out}/last.pt")["state_dict"])
    # The same seed and batches: under bf16 the convolutions round differently, so the weights
    # part from float32's (were --amp bf16 ignored, they would be identical).
    off, bf16 = runs["off"][1], runs["bf16"][1]
    assert any(not torch.equal(off[k], bf16[k]) for k in off if off[k].is_floating_point())
    # ... yet both learn: the second epoch's loss is below the first in each.
    assert runs["bf16"][0][1] < runs["bf16"][0][0] and runs["off"][0][1] < runs["off"][0][0]
