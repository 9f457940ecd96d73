"""Redoing part of a finished sweep, and where its INT8 Dice is scored: on every INT8 runner here,
the deployed one being the runner the auto backend picked when its latency was measured;
--rescore scores older results again, --remeasure follows a change of the picked runner, and
--regate exports again the points an older parity gate passed."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()
POINT = "mobile_unet-b4-d2-s64"


def _command(sweep_file, out):
    return [sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet"]


def _sweep(sweep_file, out, *extra):
    return subprocess.run(_command(sweep_file, out) + list(extra), capture_output=True, text=True)


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


def _check_a_failing_runner(folder: Path, result: dict, monkeypatch) -> None:
    """Scoring a point: an INT8 runner other than the deployed one that fails (e.g. a runtime that
    cannot compile the graph on this CPU) is named with its error and the others are scored; a
    failure of the deployed runner is raised, since that is what the point ships."""
    from edgeseg.errors import BackendError
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.sweep.scoring import validation_dice

    real_load = Segmenter.load

    def load(bundle, backend="auto", **kwargs):
        seg = real_load(bundle, backend=backend, **kwargs)
        if backend == "openvino:int8":
            def broken(*args, **kw):
                raise BackendError("openvino:int8: cannot compile the graph here")
            seg.predict_volume = broken
        return seg

    with monkeypatch.context() as patched:
        patched.setattr(Segmenter, "load", staticmethod(load))
        args = (folder / "run" / "best.pt", folder / "bundle", "phantom:cases=4,size=64,slices=16", None)
        scored = validation_dice(*args, deployed="onnxruntime:int8", fp32=False)
        assert scored["dice_int8_runners"] == {"onnxruntime:int8": result["dice_int8_runners"]["onnxruntime:int8"]}
        assert scored["dice_int8_unscored"] == {"openvino:int8": "openvino:int8: cannot compile the graph here"}
        assert scored["dice_int8_backend"] == "onnxruntime:int8"
        with pytest.raises(BackendError, match="cannot compile the graph here"):
            validation_dice(*args, deployed="openvino:int8", fp32=False)


def test_int8_dice_on_every_runner_the_deployed_one_autos_and_rescore(tmp_path, assert_one_line_error, monkeypatch,
                                                                      copy_mobile_point_sweep):
    from edgeseg.models.checkpoint import read_checkpoint

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = copy_mobile_point_sweep(tmp_path / "out")  # `--point POINT` finished
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
    _check_a_failing_runner(folder, result, monkeypatch)

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

    # A point held by another process (a sweep, --rescore or --regate running on it): --remeasure
    # measures and writes nothing for it and says so.
    import fcntl

    before = (folder / "result.json").read_bytes()
    with open(folder / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = _sweep(tmp_path / "sweep.toml", out, "--remeasure", "1")
    assert_one_line_error(proc, f"{POINT} is held by another process; run --remeasure again when it has finished")
    assert (folder / "result.json").read_bytes() == before

    # A result whose latency was measured where auto picked a runner that cannot run here (a
    # TensorRT engine on a GPU machine): --rescore cannot score what the point ships, so the
    # result stays as it was, and the command says so and fails.
    elsewhere = {**measured, "backend": "tensorrt:int8"}
    (folder / "result.json").write_text(json.dumps(elsewhere))
    before = (folder / "result.json").read_bytes()
    proc = _sweep(tmp_path / "sweep.toml", out, "--rescore")
    assert_one_line_error(proc, f"{POINT} (tensorrt:int8): auto deploys a runner that cannot run here, so its result "
                                "was left as it was; run --rescore where it runs")
    assert (folder / "result.json").read_bytes() == before


def test_the_deployed_int8_dice_is_the_picked_runners_wherever_it_stands():
    """deployed_int8 takes the runner auto picked, also when it is not the first scored; where auto
    picked an FP32 runner or one not scored, the first runner's, named."""
    from edgeseg.sweep.scoring import deployed_int8

    scored = {"dice_int8_runners": {"onnxruntime:int8": 0.11, "openvino:int8": 0.22},
              "dice_int8_runners_per_case": {"onnxruntime:int8": [0.1, 0.12], "openvino:int8": [0.2, 0.24]}}
    assert deployed_int8(scored, "openvino:int8") == {"dice_int8": 0.22, "dice_int8_per_case": [0.2, 0.24],
                                                      "dice_int8_backend": "openvino:int8"}
    assert deployed_int8(scored, "onnxruntime:int8")["dice_int8"] == 0.11
    for other in ("openvino:fp32", "tensorrt:int8", None):
        assert deployed_int8(scored, other) == {"dice_int8": 0.11, "dice_int8_per_case": [0.1, 0.12],
                                                "dice_int8_backend": "onnxruntime:int8"}
    assert deployed_int8({"dice_int8_runners": {}}, "openvino:int8")["dice_int8"] is None


def test_which_int8_dice_a_point_deploys_and_whether_points_compare():
    """int8_scoring: no INT8 Dice counts where the gate refused the graph or auto picked an FP32
    runner; an INT8 graph auto runs but no runner scored is not the FP32 Dice's to stand in for."""
    from edgeseg.sweep.report import (EVERY_RUNNER, NOT_AUTOS, ONE_RUNNER, comparable_scorings, deployed_dice,
                                      int8_scoring)

    every = {"backend": "openvino:int8", "dice_fp32": 0.9, "dice_int8": 0.8, "dice_int8_backend": "openvino:int8",
             "dice_int8_runners": {"openvino:int8": 0.8}, "int8_refused": None}
    assert int8_scoring(every) == EVERY_RUNNER and deployed_dice(every) == 0.8
    older = {k: v for k, v in every.items() if not k.startswith("dice_int8_")}
    assert int8_scoring(older) == ONE_RUNNER
    # an older result whose auto picked an FP32 runner deploys its FP32 Dice: nothing to score again
    older_fp32 = {**older, "backend": "openvino:fp32"}
    assert int8_scoring(older_fp32) is None and deployed_dice(older_fp32) == 0.9
    assert comparable_scorings([every, older_fp32])
    refused = {**every, "dice_int8": None, "dice_int8_runners": {}, "int8_refused": "parity gate failed",
               "backend": "openvino:fp32"}
    assert int8_scoring(refused) is None and comparable_scorings([every, refused])
    # auto runs the INT8 graph, but no runner could score it where it was scored
    unscored = {**every, "dice_int8": None, "dice_int8_backend": None, "dice_int8_runners": {}}
    assert int8_scoring(unscored) == NOT_AUTOS and not comparable_scorings([every, unscored])
    elsewhere = {**every, "backend": "tensorrt:int8"}
    assert int8_scoring(elsewhere) == NOT_AUTOS and not comparable_scorings([every, elsewhere])


@pytest.mark.parametrize("mode", [["--rescore"], ["--regate"], ["--remeasure", "1"]])
def test_redo_modes_refuse_a_folder_without_the_sweep_and_write_nothing(tmp_path, mode, assert_one_line_error,
                                                                         sweep_here):
    (tmp_path / "sweep.toml").write_text(SWEEP)
    for out in (tmp_path / "missing", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        proc = sweep_here(tmp_path / "sweep.toml", out, *mode)
        assert_one_line_error(proc, f"{out} holds no sweep (no sweep.json); run the sweep first")
    assert not (tmp_path / "missing").exists() and not any((tmp_path / "empty").iterdir())


def test_rescore_refuses_unfinished_points_and_another_flag(tmp_path, assert_one_line_error, sweep_here):
    from edgeseg.sweep.config import load_sweep
    from edgeseg.sweep.run import _write_record

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    out.mkdir()
    _write_record(out, load_sweep(tmp_path / "sweep.toml"))  # a sweep with no point finished yet
    proc = sweep_here(tmp_path / "sweep.toml", out, "--rescore", "--point", POINT)
    assert_one_line_error(proc, f"{POINT} is not finished: --rescore scores finished points again")
    proc = sweep_here(tmp_path / "sweep.toml", out, "--rescore", "--regate")
    assert_one_line_error(proc, "--status, --regate, --rescore and --remeasure do not go together: give one")


def test_regate_exports_again_only_the_points_an_older_gate_passed(tmp_path, assert_one_line_error,
                                                                  copy_mobile_point_sweep, sweep_here):
    """Runs whose bundles passed different parity gates are not compared (no choice); --regate
    exports the older ones again through today's gate, training nothing, and then the rule chooses."""
    (tmp_path / "sweep.toml").write_text(SWEEP + '\n[choose]\nreference = "unet-b4-d2-s64"\n')
    out = copy_mobile_point_sweep(tmp_path / "out")  # the mobile_unet point finished; the sweep runs the other
    proc = subprocess.run(_command(tmp_path / "sweep.toml", out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    old = out / "points" / "mobile_unet-b4-d2-s64"
    today = json.loads((old / "result.json").read_text())["gate"]
    assert today == "v2 (16 px)" and (out / "choice.json").is_file()
    # A result written before the gate was recorded: its bundle's parity.json says which it passed.
    result = json.loads((old / "result.json").read_text())
    del result["gate"]
    (old / "result.json").write_text(json.dumps(result))
    proc = sweep_here(tmp_path / "sweep.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert [r["gate"] for r in csv.DictReader((out / "sweep.csv").open())] == [today, today]
    # ... and a bundle from before the gate had versions.
    parity = json.loads((old / "bundle" / "parity.json").read_text())
    for key in ("gate_version", "structure_px"):
        del parity[key]
    (old / "bundle" / "parity.json").write_text(json.dumps(parity))
    stamps = {p: p.stat().st_mtime_ns for p in (old / "run").iterdir()}

    proc = sweep_here(tmp_path / "sweep.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert "no choice: the runs' bundles passed different parity gates (v2 (16 px) on 1, v1 on 1)" in proc.stdout
    assert not (out / "choice.json").exists()
    assert {r["id"]: r["gate"] for r in csv.DictReader((out / "sweep.csv").open())} == \
        {"unet-b4-d2-s64": today, "mobile_unet-b4-d2-s64": "v1"}

    proc = subprocess.run(_command(tmp_path / "sweep.toml", out) + ["--regate"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "exported again through today's gate: mobile_unet-b4-d2-s64" in proc.stdout
    after = json.loads((old / "result.json").read_text())
    assert after["gate"] == today and after["gate_before"] == "v1"
    assert json.loads((old / "bundle" / "parity.json").read_text())["gate_version"] == 2
    trained = ("best_epoch", "train_val_dice", "train_seconds_all_epochs", "train_seconds_this_run", "epochs", "dice_fp32")
    assert {k: after[k] for k in trained} == {k: result[k] for k in trained}
    assert {p: p.stat().st_mtime_ns for p in (old / "run").iterdir()} == stamps  # nothing trained
    assert json.loads((out / "choice.json").read_text())["reference"] == "unet-b4-d2-s64"

    proc = sweep_here(tmp_path / "sweep.toml", out, "--regate")
    assert proc.returncode == 0 and "nothing exported again" in proc.stdout
    # A --regate killed while it replaced a bundle leaves its mark, which the next one redoes.
    (old / "result.json").write_text(json.dumps({**after, "gate": "v1, export again interrupted"}))
    proc = subprocess.run(_command(tmp_path / "sweep.toml", out) + ["--regate"], capture_output=True, text=True)
    assert "exported again through today's gate: mobile_unet-b4-d2-s64" in proc.stdout
    assert json.loads((old / "result.json").read_text())["gate_before"] == "v1"
    proc = sweep_here(tmp_path / "sweep.toml", out, "--regate", "--remeasure", "2")
    assert_one_line_error(proc, "--status, --regate, --rescore and --remeasure do not go together: give one")

    # A point deploying its INT8 graph whose INT8 Dice was scored on ONNX Runtime alone (a result
    # from before every runner was) is not compared with one scored on every runner; --rescore
    # scores it again. (Where auto picked an FP32 runner the FP32 Dice counts, so such a result
    # would compare: both points are made to deploy INT8 here, whatever auto picked for them.)
    legacy = {k: v for k, v in after.items() if k not in ("dice_int8_runners", "dice_int8_runners_per_case", "dice_int8_backend")}
    legacy["backend"] = next(iter(after["dice_int8_runners"]))
    ref = json.loads((out / "points" / "unet-b4-d2-s64" / "result.json").read_text())
    first = next(iter(ref["dice_int8_runners"]))
    (out / "points" / "unet-b4-d2-s64" / "result.json").write_text(json.dumps(
        {**ref, "backend": first, "dice_int8_backend": first, "dice_int8": ref["dice_int8_runners"][first],
         "dice_int8_per_case": ref["dice_int8_runners_per_case"][first]}))
    (old / "result.json").write_text(json.dumps(legacy))
    proc = sweep_here(tmp_path / "sweep.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert ("no choice: the runs' INT8 Dice was not all scored alike (every runner on 1, one runner (older results) "
            "on 1); run this command with --rescore") in proc.stdout and not (out / "choice.json").exists()
    proc = subprocess.run(_command(tmp_path / "sweep.toml", out) + ["--rescore", "--point", "mobile_unet-b4-d2-s64"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "scored again on every INT8 runner here: mobile_unet-b4-d2-s64" in proc.stdout
    assert json.loads((old / "result.json").read_text())["dice_int8_runners"] == after["dice_int8_runners"]
    assert (out / "choice.json").is_file()


def test_a_point_whose_int8_the_gate_refuses_is_reported_in_fp32_with_the_reason(tmp_path):
    """Calibrated on blank slices, the INT8 graph saturates on real ones and the gate refuses it;
    the point is still finished, exported in FP32 and on the front with its FP32 Dice."""
    import numpy as np

    blank = tmp_path / "blank.npy"
    np.save(blank, np.zeros((16, 1, 64, 64), np.float32))
    text = SWEEP.replace('model = ["unet", "mobile_unet"]', 'model = ["unet"]').replace(
        'calib = "phantom:cases=3,size=64,slices=16,seed=5"', f'calib = "{blank}"')
    text += '\n[choose]\nreference = "unet-b4-d2-s64"\n'
    (tmp_path / "sweep.toml").write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run(_command(tmp_path / "sweep.toml", out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    point = out / "points" / "unet-b4-d2-s64"
    result = json.loads((point / "result.json").read_text())
    assert result["dice_int8"] is None and "parity gate failed" in result["int8_refused"]
    assert 0.0 < result["dice_fp32"] <= 1.0 and result["latency_ms_p50"] > 0
    assert not (point / "bundle" / "model.int8.onnx").exists() and (point / "bundle" / "model.onnx").is_file()
    assert "int8 refused" in proc.stdout and "*front" in proc.stdout
    [row] = list(csv.DictReader((out / "sweep.csv").open()))
    assert row["dice_int8"] == "" and "parity gate failed" in row["int8_refused"] and row["pareto"] == "True"
    assert result["int8_scheme"] is None and row["int8_scheme"] == ""
    choice = json.loads((out / "choice.json").read_text())  # the only point is its own reference
    assert choice["chosen"] == "unet-b4-d2-s64" and choice["speedup_end_to_end"] == 1.0
    assert choice["dice"] == result["dice_fp32"] and "chosen: unet-b4-d2-s64" in proc.stdout


RAISE_IN_CHILD = """
import sys
from edgeseg.errors import DataError, MissingDependencyError, require
from edgeseg.sweep.run import in_fresh_process

def data_error():
    raise DataError("the data is gone")

if __name__ == "__main__":
    for fn, args, expected in ((data_error, (), DataError), (require, ("no_such_module_x", "io", "reading it"),
                                                              MissingDependencyError)):
        try:
            in_fresh_process(fn, *args)
        except expected as exc:
            print(type(exc).__name__, exc)
"""


def test_errors_raised_in_the_fresh_interpreter_reach_the_caller_as_themselves(tmp_path):
    """A point is scored and measured in a spawned interpreter: its errors (edgeseg's, which the
    CLI prints as one line) must come back as they were raised, not as a broken process pool."""
    (tmp_path / "child.py").write_text(RAISE_IN_CHILD)
    proc = subprocess.run([sys.executable, str(tmp_path / "child.py")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "DataError the data is gone",
        "MissingDependencyError reading it needs the 'no_such_module_x' package: pip install 'edgeseg[io]'"]
