"""Weight EMA against a float64 numpy recurrence; what training validates, saves and resumes."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeseg.models.checkpoint import load_model, read_checkpoint
from edgeseg.train.ema import WeightEMA, ema_decay
from edgeseg.train.loop import prepare, train
from edgeseg.train.precision import cpu_has_bf16

from .test_training import tiny


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def perturb(model: nn.Module, rng: np.random.Generator) -> None:
    """Give every float tensor of the state new random values, and step the BN counter."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.from_numpy(rng.normal(size=tuple(t.shape))))
            else:
                t.add_(3)


def test_ema_follows_the_recurrence_with_warm_up():
    rng = np.random.default_rng(0)
    model = small_net()
    decay = 0.8
    ema = WeightEMA(model, decay)
    expected: dict[str, np.ndarray] = {}
    # n = 1 copies; the warm-up (n-1)/(n+9) stays below 0.8 up to n = 40, the cap holds after.
    for n in range(1, 61):
        perturb(model, rng)
        ema.update(model)
        d = min(decay, (n - 1) / (n + 9))
        for name, t in model.state_dict().items():
            w = t.double().numpy()
            expected[name] = w.copy() if n == 1 or not t.is_floating_point() else d * expected[name] + (1 - d) * w
    assert ema.updates == 60
    state = ema.module.state_dict()
    for name, want in expected.items():
        np.testing.assert_allclose(state[name].double().numpy(), want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_ema_decay_cap_binds_after_warm_up():
    model = small_net()
    ema = WeightEMA(model, 0.5)
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(20):
        seen.append(ema.current_decay())
        perturb(model, rng)
        ema.update(model)
    assert seen[0] == 0.0
    assert seen[1] == pytest.approx(1 / 11)
    assert seen[-1] == 0.5 and max(seen) == 0.5
    # Cap in force: the next update mixes half and half.
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    perturb(model, rng)
    ema.update(model)
    for name, t in ema.module.state_dict().items():
        if t.is_floating_point():
            torch.testing.assert_close(t, 0.5 * before[name] + 0.5 * model.state_dict()[name])


def test_zero_decay_follows_the_model_and_the_copy_is_frozen():
    model = small_net()
    ema = WeightEMA(model, 0.0)
    perturb(model, np.random.default_rng(2))
    ema.update(model)
    for name, t in model.state_dict().items():
        torch.testing.assert_close(ema.module.state_dict()[name], t)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_decay_from_horizon_and_bad_decay():
    assert ema_decay(200) == pytest.approx(0.995)
    assert ema_decay(1) == 0.0
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(small_net(), 1.0)


def test_a_horizon_beyond_float_precision_still_gives_a_decay_below_one():
    """1 - 1/horizon rounds to 1.0 past 2**53 steps: `--ema 1e17` ended in WeightEMA's ValueError."""
    for steps in (1e17 * 6, 1e308 * 6):
        decay = ema_decay(steps)
        assert 0.999 < decay < 1.0
        WeightEMA(small_net(), decay)


def test_bf16_autocast_only_with_amx():
    assert cpu_has_bf16("flags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("flags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert not cpu_has_bf16("model name\t: amx_bf16 in a name is not a flag\nflags\t: sse2\n")


def _per_case_dice_numpy(pred: np.ndarray, truth: np.ndarray, cases: np.ndarray) -> float:
    scores = []
    for c in np.unique(cases):
        p, t = pred[cases == c] == 1, truth[cases == c] == 1
        denom = p.sum() + t.sum()
        scores.append(1.0 if denom == 0 else 2 * np.logical_and(p, t).sum() / denom)
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    cfg = tiny(tmp_path_factory.mktemp("ema"), epochs=4, ema_epochs=1.0)
    return cfg, train(cfg, progress=False)


def test_saved_weights_are_the_validated_moving_average(ema_run):
    cfg, result = ema_run
    last = read_checkpoint(Path(cfg.out) / "last.pt")
    data = prepare(cfg)
    assert last["ema_updates"] == 4 * -(-len(data["train"]) // 8)  # one update per batch of 8
    raw, avg = last["train_state_dict"], last["state_dict"]
    differs = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], avg[k])]
    assert differs, "the EMA weights should differ from the raw weights"
    # The weights in best.pt reproduce the validation Dice recorded for their epoch, computed
    # here with numpy on the same validation slices.
    model, payload = load_model(Path(cfg.out) / "best.pt")
    val = data["val"]
    with torch.no_grad():
        pred = model(torch.from_numpy(val.images[:])).argmax(1).numpy()
    row = result["history"][payload["epoch"] - 1]
    assert _per_case_dice_numpy(pred, val.labels, val.case_index) == pytest.approx(row["val_dice"], abs=1e-9)


class _Stop(Exception):
    """Raised from the epoch callback to interrupt a run, as a crash or Ctrl-C would."""


def test_interrupted_run_resumes_to_the_same_weights_and_average(ema_run, tmp_path):
    cfg, result = ema_run
    run = tmp_path / "run"

    def stop_after_two(row):
        if row["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(tiny(tmp_path, out=str(run), epochs=4, ema_epochs=1.0), progress=False, on_epoch=stop_after_two)
    resumed = train(tiny(tmp_path, out=str(run), epochs=4, ema_epochs=1.0), resume=True, progress=False)
    assert [r["val_dice"] for r in resumed["history"]] == [r["val_dice"] for r in result["history"]]
    a, b = read_checkpoint(Path(cfg.out) / "last.pt"), read_checkpoint(run / "last.pt")
    assert a["ema_updates"] == b["ema_updates"]
    # bit for bit: every draw follows (seed, epoch, step) and the optimiser state is saved whole,
    # so on one machine and thread count a resumed run is the uninterrupted one (docs/training.md)
    for key in ("state_dict", "train_state_dict"):
        assert [name for name in a[key] if not torch.equal(b[key][name], a[key][name])] == [], key


def test_resume_copy_of_a_run_keeps_history(ema_run, tmp_path):
    cfg, result = ema_run
    run = tmp_path / "copy"
    shutil.copytree(cfg.out, run)
    more = train(tiny(tmp_path, out=str(run), epochs=5, ema_epochs=1.0), resume=True, progress=False)
    assert more["history"][:4] == result["history"]
    assert read_checkpoint(run / "last.pt")["ema_updates"] == read_checkpoint(Path(cfg.out) / "last.pt")["ema_updates"] * 5 // 4
