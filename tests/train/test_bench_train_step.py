"""benchmarks/bench_train_step.py: it runs against the current training loop (store, sampler,
loader) and its loops compare like with like (same initial weights, same training slices)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_train_step.py"
TINY = ["--size", "32", "--base", "4", "--depth", "2", "--slices", "6", "--threads", "1"]


def _module():
    spec = importlib.util.spec_from_file_location("bench_train_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_runs_and_reports_the_medians_it_printed_per_round(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--steps", "1", "--rounds", "3", "--cpu-time"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    medians = {}
    for name in ("edgeseg", "plain", "plain-cl"):
        (line,) = [l for l in proc.stdout.splitlines() if l.startswith(f"{name} ")]
        median, rounds = re.match(r"\S+\s+median (\S+) s/step\s+rounds (.*)$", line).groups()
        rounds = [float(x) for x in rounds.split()]
        assert len(rounds) == 3 and float(median) == sorted(rounds)[1] and float(median) > 0
        medians[name] = sorted(rounds)[1]
    ratios = re.search(r"edgeseg / plain: (\S+)\s+edgeseg / plain channels-last: (\S+)", proc.stdout).groups()
    for ratio, base in zip(ratios, ("plain", "plain-cl")):  # the medians are printed to 0.0005
        e, b = medians["edgeseg"], medians[base]
        assert (e - 5e-4) / (b + 5e-4) - 1e-3 <= float(ratio) <= (e + 5e-4) / max(b - 5e-4, 1e-9) + 1e-3
    assert list(tmp_path.iterdir()) == []  # the slice store went to a temporary folder
    parts = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--parts"], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path, env=env)
    assert parts.returncode == 0, parts.stderr[-2000:]
    assert len(re.findall(r"CPU ms/step", parts.stdout)) == 3


def test_the_loops_start_alike_on_the_same_slices(tmp_path):
    bench = _module()
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import prepare

    cfg = TrainConfig(data="phantom:cases=4,seed=0,size=32,slices=6", out=str(tmp_path / "unused"), size=32, base=4,
                      depth=2, batch_size=4, epochs=1000, amp="off", fractions=(0.5, 0.25, 0.25), seed=0, workers=0,
                      cache=str(tmp_path / "store"))
    data = prepare(cfg)
    state = bench.edgeseg_state(cfg, data)
    plain = bench.PlainLoop(cfg, data)
    ours, theirs = state.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # The plain loop holds exactly the training cases' slices, as the store gives them.
    rows = data["train"].rows
    assert len(plain.images) == len(rows) == 12
    images, labels = data["store"].take(rows[::-1])
    assert np.array_equal(plain.images.numpy()[::-1], images) and np.array_equal(plain.labels.numpy()[::-1], labels)
    # edgeseg's batches are the loop's own: batch-sized, drawn from the training rows only.
    batches = bench.loader_batches(state)
    for _ in range(state.steps_per_epoch + 1):  # into a second epoch
        x, y = next(batches)
        assert x.shape == (4, 1, 32, 32) and y.shape == (4, 32, 32)
    planned = list(bench.planned_rows(state, 5))
    assert len(planned) == 5 and all(len(r) == 4 and set(r) <= set(rows.tolist()) for r in planned)
    assert not (tmp_path / "unused").exists()
