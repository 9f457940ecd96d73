"""--deterministic: torch's deterministic mode for the run, recorded, kept across --resume, and
runs that repeat bit for bit (on the CPU here; CUDA is where it matters, and is not on CI)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgeseg.cli.inspect import provenance_lines
from edgeseg.errors import CheckpointError, EdgesegError
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.train.determinism import deterministic_mode, prepare_cublas
from edgeseg.train.loop import train
from edgeseg.train.losses import gathered_cross_entropy

from .test_training import tiny

EDGESEG = [sys.executable, "-m", "edgeseg"]


def _det(tmp_path, name, **kw):
    return tiny(tmp_path, out=str(tmp_path / name), **{"threads": 1, "workers": 0, "deterministic": True, **kw})


def test_two_deterministic_runs_repeat_bit_for_bit_and_record_the_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    for name in ("a", "b"):
        train(_det(tmp_path, name, epochs=2), progress=False)
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("a", "b"))
    for key in ("state_dict", "optimizer"):
        flat_a, flat_b = _tensors(a[key]), _tensors(b[key])
        assert len(flat_a) == len(flat_b) > 0 and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b)), key
    assert a["train_config"]["deterministic"] is True
    assert a["provenance"]["sessions"][0]["determinism"] == {
        "algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
        "cublas_workspace_config": ":4096:8"}
    session_line = provenance_lines({"training": a["provenance"]})[1]
    assert session_line.startswith("  session 1 from epoch 1: 1 thread(s), amp off, channels-last, 1 process(es), "
                                   "deterministic; edgeseg")
    # auto does not time the layouts (their timings follow the machine's load)
    assert a["memory_format"]["chosen"] == "channels-last" and "seconds_per_pass" not in a["memory_format"]
    # the process's settings are put back for whatever runs next in it (cv trains folds in one process)
    assert torch.are_deterministic_algorithms_enabled() is before


def _tensors(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


def test_resume_keeps_deterministic_as_the_run_had_it(tmp_path, assert_one_line_error):
    train(_det(tmp_path, "on", epochs=1), progress=False)
    with pytest.raises(CheckpointError, match="deterministic: True -> False"):
        train(_det(tmp_path, "on", epochs=2, deterministic=False), resume=True, progress=False)
    # a run without it, as every run before the option was: --resume --deterministic is refused too
    common = ["--data", "phantom:cases=5,seed=1,size=64,slices=10", "--out", str(tmp_path / "off"), "--size", "64",
              "--base", "4", "--depth", "2", "--window", "-200,300", "--threads", "1", "--workers", "0", "--quiet",
              "--amp", "off", "--val-fraction", "0.2", "--test-fraction", "0.2"]
    subprocess.run([*EDGESEG, "train", *common, "--epochs", "1"], check=True, capture_output=True)
    last = tmp_path / "off" / "last.pt"
    payload = torch.load(last, weights_only=True)
    del payload["train_config"]["deterministic"]  # as a run of an earlier version recorded it
    torch.save(payload, last)
    proc = subprocess.run([*EDGESEG, "train", *common, "--epochs", "2", "--resume", "--deterministic"],
                          capture_output=True, text=True)
    assert_one_line_error(proc, "with other training settings (deterministic: False -> True)")
    assert read_checkpoint(tmp_path / "off" / "last.pt")["epoch"] == 1


@pytest.mark.parametrize("weights", [None, [0.2, 1.0, 3.0]])
def test_gathered_cross_entropy_is_torchs_cross_entropy(weights):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 9, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (4, 9, 7), generator=gen)
    weight = torch.tensor(weights, dtype=torch.float64) if weights else None
    ours = gathered_cross_entropy(logits, target, weight)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = F.cross_entropy(logits, target, weight=weight)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-12, atol=1e-12)


def test_an_operation_without_a_deterministic_implementation_is_one_line():
    # put_ without accumulation has no deterministic implementation on any device
    with pytest.raises(EdgesegError, match="no deterministic implementation of put_"):
        with deterministic_mode(True):
            torch.zeros(4).put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]))
    assert not torch.are_deterministic_algorithms_enabled()


def test_cublas_setting_is_set_unless_one_for_reproducibility_is_given(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    prepare_cublas()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    prepare_cublas()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_a_deterministic_run_stopped_and_resumed_is_the_uninterrupted_run(tmp_path):
    train(_det(tmp_path, "whole", epochs=3), progress=False)
    train(_det(tmp_path, "parts", epochs=1), progress=False)
    train(_det(tmp_path, "parts", epochs=3), resume=True, progress=False)
    whole, parts = (read_checkpoint(tmp_path / name / "last.pt") for name in ("whole", "parts"))
    for key in ("state_dict", "optimizer"):
        a, b = _tensors(whole[key]), _tensors(parts[key])
        assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b)), key
    assert [row["val_dice"] for row in whole["history"]] == [row["val_dice"] for row in parts["history"]]


def test_resume_under_deterministic_keeps_the_rounding_of_the_run(tmp_path):
    """Threads (and amp, memory format) may change on a plain --resume, which then continues not
    bit for bit; under --deterministic that would break the promise silently, so it is refused."""
    train(_det(tmp_path, "run", epochs=1), progress=False)
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match=r"round otherwise than its last session \(threads: 1 -> 2\); "
                                              r"give --threads 1, or train into another --out"):
        train(_det(tmp_path, "run", epochs=2, threads=2), resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"memory_format: channels-last -> contiguous\); give --memory-format "
                                              r"channels-last"):
        train(_det(tmp_path, "run", epochs=2, memory_format="contiguous"), resume=True, progress=False)
    assert last.read_bytes() == before
    train(_det(tmp_path, "run", epochs=2), resume=True, progress=False)  # the run's own settings: it continues
    assert read_checkpoint(last)["epoch"] == 2
