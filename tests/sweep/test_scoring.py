"""A sweep point's INT8 Dice is scored on every INT8 runner here, and the one it deploys is the
runner the auto backend picked when its latency was measured; --rescore scores older results
again, --remeasure follows a change of the picked runner."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()
POINT = "mobile_unet-b4-d2-s64"


def _sweep(sweep_file, out, *extra):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
                           *extra], capture_output=True, text=True)


def _oracle_dice(bundle: Path, backend: str, cases: list[str], data: str, label_values) -> list[float]:
    """Per-case Dice of the bundle run on ``backend``, counted here with numpy."""
    from edgeseg.data import open_dataset
    from edgeseg.data.slice_set import map_labels
    from edgeseg.runtime.segmenter import Segmenter

    volumes = {v.case_id: v for v in open_dataset(data)}
    seg, scores = Segmenter.load(bundle, backend=backend), []
    for case in cases:
        pred, truth = seg.predict_volume(volumes[case]) == 1, map_labels(volumes[case].label, label_values) == 1
        total = int(pred.sum()) + int(truth.sum())
        scores.append(1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total)
    return scores


def test_int8_dice_on_every_runner_the_deployed_one_autos_and_rescore(tmp_path):
    from edgeseg.models.checkpoint import read_checkpoint

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    proc = _sweep(tmp_path / "sweep.toml", out, "--point", POINT)
    assert proc.returncode == 0, proc.stderr
    folder = out / "points" / POINT
    result = json.loads((folder / "result.json").read_text())
    runners = result["dice_int8_runners"]
    # both CPU runners of the INT8 ONNX graph, each scored over the same validation cases
    assert set(runners) == {"onnxruntime:int8", "openvino:int8"}
    label_values = read_checkpoint(folder / "run" / "best.pt")["label_values"]
    for backend in runners:
        expected = _oracle_dice(folder / "bundle", backend, result["val_cases"], "phantom:cases=4,size=64,slices=16",
                                label_values)
        assert result["dice_int8_runners_per_case"][backend] == pytest.approx(expected, abs=5e-5)
        assert runners[backend] == pytest.approx(np.mean(expected), abs=5e-5)
    # the deployed INT8 Dice is that of the runner auto picked, or, where auto picked an FP32
    # runner (a tiny model on one thread may be faster so), the first runner's, named
    deployed = result["backend"] if result["backend"] in runners else next(iter(runners))
    assert result["dice_int8_backend"] == deployed
    assert result["dice_int8"] == runners[deployed]
    assert result["dice_int8_per_case"] == result["dice_int8_runners_per_case"][deployed]
    rows = (out / "sweep.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert row[header.index("dice_int8_backend")] == deployed
    assert row[header.index("dice_int8_runners")] == " ".join(f"{k}={v}" for k, v in runners.items())

    # A result from before every runner was scored (ONNX Runtime alone, here a made-up value):
    # --rescore scores it again, keeps its FP32 Dice (a sentinel: not recomputed) and trains and
    # exports nothing.
    legacy = {k: v for k, v in result.items() if not k.startswith("dice_int8_")}
    legacy.update(dice_int8=0.123, dice_int8_per_case=[0.123] * len(result["val_cases"]), dice_fp32=0.5)
    (folder / "result.json").write_text(json.dumps(legacy))
    stamps = {p: p.stat().st_mtime_ns for p in [*(folder / "run").iterdir(), *(folder / "bundle").iterdir()]}
    proc = _sweep(tmp_path / "sweep.toml", out, "--rescore")
    assert proc.returncode == 0, proc.stderr
    assert f"scored again on every INT8 runner here: {POINT}" in proc.stdout
    again = json.loads((folder / "result.json").read_text())
    assert again["dice_int8_runners"] == runners and again["dice_int8"] == result["dice_int8"]
    assert again["dice_int8_backend"] == deployed and again["dice_fp32"] == 0.5
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --remeasure: the deployed INT8 Dice follows the runner auto picks in the round kept.
    marked = {**again, "dice_int8_runners": {"onnxruntime:int8": 0.11, "openvino:int8": 0.22},
              "dice_int8_runners_per_case": {"onnxruntime:int8": [0.11], "openvino:int8": [0.22]}}
    (folder / "result.json").write_text(json.dumps(marked))
    proc = _sweep(tmp_path / "sweep.toml", out, "--remeasure", "1")
    assert proc.returncode == 0, proc.stderr
    measured = json.loads((folder / "result.json").read_text())
    picked = measured["backend"] if measured["backend"] in marked["dice_int8_runners"] else "onnxruntime:int8"
    assert measured["dice_int8_backend"] == picked
    assert measured["dice_int8"] == marked["dice_int8_runners"][picked]


def test_rescore_refuses_unfinished_points_and_another_flag(tmp_path, assert_one_line_error):
    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    out.mkdir()
    proc = _sweep(tmp_path / "sweep.toml", out, "--rescore", "--point", POINT)
    assert_one_line_error(proc, f"{POINT} is not finished: --rescore scores finished points again")
    proc = _sweep(tmp_path / "sweep.toml", out, "--rescore", "--regate")
    assert_one_line_error(proc, "--status, --regate, --rescore and --remeasure do not go together: give one")
