"""Training's memory format: auto times both layouts on the model and batch at hand and keeps the
faster (channels-last unless contiguous wins by the margin); an explicit format is what trains;
the layout does not change what is learned."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseg.models import ModelConfig, build_model
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train
from edgeseg.errors import EdgesegError
from edgeseg.runtime.machine import machine_signature
from edgeseg.train import memory_format
from edgeseg.train.memory_format import MARGIN, pick_format, probe_memory_format

PHANTOM = "phantom:cases=5,seed=1,size=64,slices=10"


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(data=PHANTOM, out=str(tmp_path / "run"), size=64, base=4, depth=2, epochs=1, batch_size=8, lr=5e-3,
                window=(-200.0, 300.0), amp="off", fractions=(0.6, 0.2, 0.2), workers=0, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("times, expected", [
    ({"channels-last": [1.00, 1.20], "contiguous": [0.85, 0.80]}, "contiguous"),   # 0.80 < 0.90
    ({"channels-last": [1.00, 1.20], "contiguous": [0.95, 0.91]}, "channels-last"),  # faster, not by 10 %
    ({"channels-last": [2.00, 0.50], "contiguous": [0.60, 0.70]}, "channels-last"),  # fastest pass counts
    ({"channels-last": [1.00], "contiguous": [1.50]}, "channels-last"),
])
def test_pick_format_takes_contiguous_only_when_clearly_faster(times, expected):
    assert MARGIN == 0.10
    assert pick_format(times) == expected


def test_the_probe_times_both_formats_and_leaves_model_and_rng_alone():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="unet", num_classes=3, base=4, depth=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    chosen, measured = probe_memory_format(model, 4, 32, 3, torch.device("cpu"), min_step_s=0.0, rounds=3)
    times = measured["seconds_per_pass"]
    assert sorted(times) == ["channels-last", "contiguous"]
    # Channels-last's two warm passes are its gauge and count; then three alternating rounds.
    assert len(times["channels-last"]) == 5 and len(times["contiguous"]) == 3
    assert all(min(v) > 0 for v in times.values())
    assert chosen == pick_format(times)
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics included
    assert all(p.grad is None for p in model.parameters())
    wide = next(w for w in model.parameters() if w.ndim == 4 and w.shape[1] > 1 and w.shape[2] > 1)
    assert wide.is_contiguous() and not wide.is_contiguous(memory_format=torch.channels_last)  # untouched

    chosen, measured = probe_memory_format(model, 4, 32, 3, torch.device("cpu"), min_step_s=1e6)
    assert chosen == "channels-last" and "not probed" in measured["reason"]


def _conv_weight(path: Path) -> torch.Tensor:
    state = read_checkpoint(path)["state_dict"]
    return next(v for v in state.values() if v.ndim == 4 and v.shape[1] > 1 and v.shape[2] > 1)


def test_an_explicit_format_is_what_trains_and_learns_the_same(tmp_path):
    results = {}
    for name, layout in (("contiguous", torch.contiguous_format), ("channels-last", torch.channels_last)):
        cfg = tiny(tmp_path / name, memory_format=name)
        results[name] = train(cfg, progress=False)["history"]
        weight = _conv_weight(Path(cfg.out) / "last.pt")
        assert weight.is_contiguous(memory_format=layout) and not weight.is_contiguous(
            memory_format=torch.channels_last if layout == torch.contiguous_format else torch.contiguous_format)
        record = json.loads((Path(cfg.out) / "metrics.json").read_text())["memory_format"]
        assert record == {"requested": name, "chosen": name, "machine": machine_signature()}
    # Same seed, same batches: the layouts differ in float rounding only.
    a, b = results["contiguous"][0], results["channels-last"][0]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["val_dice"] - b["val_dice"]) < 0.02


def test_auto_keeps_channels_last_where_a_step_is_too_short_to_probe(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_format, "MIN_PROBED_STEP_S", 1e6)  # no pass is that long: not timing-dependent
    cfg = tiny(tmp_path)
    train(cfg, progress=False)
    record = json.loads((Path(cfg.out) / "metrics.json").read_text())["memory_format"]
    assert record["requested"] == "auto" and record["chosen"] == "channels-last"
    assert "not probed" in record["reason"]
    assert _conv_weight(Path(cfg.out) / "last.pt").is_contiguous(memory_format=torch.channels_last)


def test_an_unknown_format_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeseg", "train", "--data", PHANTOM, "--out", str(tmp_path / "r"),
                           "--memory-format", "nhwc"], capture_output=True, text=True)
    assert proc.returncode == 2 and "'nhwc' is not one of 'auto', 'channels-last', 'contiguous'" in proc.stderr
    assert not (tmp_path / "r").exists()
    with pytest.raises(EdgesegError, match="memory format must be auto, channels-last or contiguous"):
        tiny(tmp_path, memory_format="nhwc")


def test_auto_chooses_per_machine_and_a_resume_on_the_same_machine_keeps_the_choice(tmp_path, monkeypatch):
    """The probe's choice (here contiguous: the probe answers so, as it does on an AVX2 CPU) is
    what trains and is recorded with the machine; resumed on the same machine the run keeps it
    without probing again; on another machine it probes again and moves the weights and Adam's
    averages to the new layout."""
    calls = []

    def probe(model, *args, **kwargs):
        calls.append(args)
        return answer[0], {"seconds_per_pass": {"channels-last": [2.0], "contiguous": [1.0]}}

    answer = ["contiguous"]
    monkeypatch.setattr(memory_format, "probe_memory_format", probe)
    cfg = tiny(tmp_path, epochs=1)
    train(cfg, progress=False)
    run = Path(cfg.out)
    record = json.loads((run / "metrics.json").read_text())["memory_format"]
    assert record["chosen"] == "contiguous" and record["machine"] and len(calls) == 1
    assert _conv_weight(run / "last.pt").is_contiguous()
    assert read_checkpoint(run / "last.pt")["memory_format"]["chosen"] == "contiguous"

    cfg.epochs = 2
    train(cfg, resume=True, progress=False)
    record = json.loads((run / "metrics.json").read_text())["memory_format"]
    assert len(calls) == 1 and record["chosen"] == "contiguous" and "kept from the checkpoint" in record["reason"]

    # Another machine: a checkpoint that names a different one is probed again.
    payload = torch.load(run / "last.pt", weights_only=True)
    payload["memory_format"]["machine"] = "another CPU | 64 cpus | avx512f"
    torch.save(payload, run / "last.pt")
    answer[0] = "channels-last"
    cfg.epochs = 3
    train(cfg, resume=True, progress=False)
    assert len(calls) == 2
    last = read_checkpoint(run / "last.pt")
    assert last["memory_format"]["chosen"] == "channels-last"
    assert _conv_weight(run / "last.pt").is_contiguous(memory_format=torch.channels_last)
    averages = [v for state in last["optimizer"]["state"].values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] > 1 and v.shape[2] > 1]
    assert averages and all(v.is_contiguous(memory_format=torch.channels_last) for v in averages)
