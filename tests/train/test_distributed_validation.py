"""Validation shared by the processes of a torchrun run: each predicts every N-th validation
case, the per-case results are gathered, and what the run records (the epoch's validation loss
and Dice, the best epoch, best.pt's post-processing choice) is, bit for bit, what one process
validating the saved weights computes.

The run (tests/train/ddp_validation_worker.py, two gloo processes on the CPU) has three
validation cases, so the processes' shares are uneven (two and one); test_distributed.py's run,
with one validation case, has a process with none. The references are the same functions run
here in one process on the checkpoint's weights, in one thread as each torchrun process is.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseg.train.distributed import ProcessPlace
from edgeseg.train.validate import _share

sys.path.insert(0, str(Path(__file__).parent))
import ddp_validation_worker  # noqa: E402
import ddp_worker  # noqa: E402
from test_distributed import _env  # noqa: E402


@pytest.fixture(scope="module")
def shared_validation(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-val")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(Path(ddp_validation_worker.__file__)), str(out), "2"],
                          cwd=out, env=_env(out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return out, ranks


def test_each_process_predicts_every_nth_validation_case(shared_validation):
    """Rank 1 used to sit idle through validation: rank 0 predicted every case."""
    _, ranks = shared_validation
    kept = [sorted(int(m.group(1)) for p in r["writes"] if (m := re.search(r"validation[^/]*/(\d+)\.npy$", p)))
            for r in ranks]
    # every epoch each process writes the predictions of its own cases, and only those
    assert set(kept[0]) == {0, 2} and set(kept[1]) == {1}, kept


def test_the_recorded_validation_is_one_process_validation_bit_for_bit(shared_validation):
    out, _ = shared_validation
    run = out / "run"
    cfg = ddp_validation_worker.config(out / "ref", 2)  # the run's data, prepared here again
    history = json.loads((run / "metrics.json").read_text())["history"]
    val, _ = ddp_worker.one_process_validation(cfg, run / "last.pt")
    last = history[-1]
    assert (last["val_loss"], last["val_dice"], last["val_dice_liver"]) == (val["loss"], val["dice"], val["per_class"][0])
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=False)
    val_best, post_best = ddp_worker.one_process_validation(cfg, run / "best.pt")
    assert all(0 < d[0] < 1 for d in val_best["per_case"].values()), val_best["per_case"]
    assert history[best["best"]["epoch"] - 1]["val_dice"] == val_best["dice"]
    assert best["postprocess"] == post_best  # the candidates' pooled Dice included, val_dice_post_per_class
    assert json.loads((run / "metrics.json").read_text())["best"]["postprocess"] == post_best


@pytest.mark.parametrize("cases, processes", [(3, 2), (1, 2), (7, 3), (2, 4)])
def test_the_shares_cover_every_case_once(cases, processes):
    numbers = list(range(10, 10 + cases))
    shares = [_share(numbers, ProcessPlace(rank=r, world_size=processes)) for r in range(processes)]
    taken = [k for share in shares for _, k in share]
    assert sorted(taken) == numbers
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(numbers[i] == k for share in shares for i, k in share)
