"""edgeseg sweep on a tiny phantom grid: results, reports, resume after a kill (bad sweep files: test_sweep_file.py)."""

import csv
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()


def _sweep_command(sweep_file, out):
    return [sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet"]


def _kill_after_first_point(sweep_file, out, first, timeout_s=600.0):
    """Start `edgeseg sweep`, SIGKILL it as soon as its first point's result is written."""
    proc = subprocess.Popen(_sweep_command(sweep_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    try:
        while not (first / "result.json").is_file():
            assert proc.poll() is None, f"the sweep ended before it was killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the first point took too long"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    return proc.returncode


def test_sweep_resumes_after_a_kill_and_writes_the_reports(tmp_path, sweep_here):
    from edgeseg.cli.train import command as train_command
    from edgeseg.runtime.machine import machine_signature

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    first = out / "points" / "unet-b4-d2-s64"
    second = out / "points" / "mobile_unet-b4-d2-s64"

    # A real kill of the command, the moment its first point is finished.
    assert _kill_after_first_point(tmp_path / "sweep.toml", out, first) == -signal.SIGKILL
    assert not (second / "result.json").exists()
    before = (first / "result.json").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (first / "run").iterdir()}

    proc = subprocess.run(_sweep_command(tmp_path / "sweep.toml", out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Point 1 was read: its timings (which differ on every measurement) and run files are unchanged.
    assert (first / "result.json").read_bytes() == before
    assert {p: p.stat().st_mtime_ns for p in (first / "run").iterdir()} == stamps
    points = json.loads((out / "sweep.json").read_text())["points"]
    assert [p["id"] for p in points] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"]
    for p in points:
        assert 0.0 <= p["dice_int8"] <= 1.0 and 0.0 <= p["dice_fp32"] <= 1.0
        assert len(p["dice_int8_per_case"]) == len(p["val_cases"]) >= 1
        assert p["latency_ms_p50"] > 0 and p["volume_slices_per_s"] > 0 and p["epochs"] == 3
        assert (out / "points" / p["id"] / "bundle" / "model.int8.onnx").is_file()
        assert p["int8_scheme"] == "cpu"  # the default scheme, read from the point's bundle
        assert p["machine"] == machine_signature()  # measured here

    # The command on the finished folder reads every point and writes the reports.
    proc = sweep_here(tmp_path / "sweep.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert (first / "result.json").read_bytes() == before and "*front" in proc.stdout
    paths = {k: out / name for k, name in [("csv", "sweep.csv"), ("png", "pareto.png"), ("commands", "commands.sh")]}
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["id"] for r in rows] == [p["id"] for p in points]
    assert any(r["pareto"] == "True" for r in rows) and {r["int8_scheme"] for r in rows} == {"cpu"}
    assert {r["machine"] for r in rows} == {machine_signature()}
    from PIL import Image

    with Image.open(paths["png"]) as image:
        assert image.format == "PNG" and image.size[0] > 300
    commands = [ln for ln in paths["commands"].read_text().splitlines() if ln.startswith("edgeseg ")]
    assert len(commands) == 6
    train_args = shlex.split(commands[0])
    ctx = train_command.make_context("train", train_args[2:])  # every flag is one `edgeseg train` takes
    assert ctx.params["model"] == "unet" and ctx.params["epochs"] == 3 and ctx.params["no_augment"]

    # A rule that keeps the reference names the closest faster variant that missed it. The
    # mobile point is made 4x faster (latencies that stay exact when reports round them) and 0.1
    # worse, deployed and FP32, than the reference, on the reference's runner (which runner auto
    # picked, so which Dice is deployed, follows the latencies measured on the machine).
    ref = json.loads((first / "result.json").read_text())
    (first / "result.json").write_text(json.dumps({**ref, "latency_ms_p50": 8.0}))
    fast = json.loads((second / "result.json").read_text())
    fast.update(latency_ms_p50=2.0, dice_int8=ref["dice_int8"] - 0.1, dice_fp32=ref["dice_fp32"] - 0.1,
                backend=ref["backend"], dice_int8_backend=ref.get("dice_int8_backend"))
    (second / "result.json").write_text(json.dumps(fast))
    (tmp_path / "choose.toml").write_text(SWEEP + '\n[choose]\nreference = "unet-b4-d2-s64"\nmax_dice_loss = 0.05\n')
    proc = sweep_here(tmp_path / "choose.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert "chosen: unet-b4-d2-s64 (" in proc.stdout
    assert ("closest faster miss: mobile_unet-b4-d2-s64, 4.00x faster end to end, mean Dice -0.1000 deployed / "
            "-0.1000 FP32 against unet-b4-d2-s64 (margin 0.05); paired over 1 seed(s): mean gap -0.1000; over ") in proc.stdout
    missed = json.loads((out / "choice.json").read_text())["faster_missed"]
    assert [m["id"] for m in missed] == ["mobile_unet-b4-d2-s64"] and missed[0]["speedup_end_to_end"] == 4.0
    # Both points are seed 0, so they validated on the same cases: one seed pair, no interval.
    assert missed[0]["paired"]["seeds"] == 1 and missed[0]["paired"]["gap_ci95"] is None
    assert missed[0]["paired"]["case_pairs"] == len(ref["val_cases"])

    # The mobile point measured again after an upgrade of a backend library: no choice, and the
    # line says which library and how to mend it; accepted in [choose], the choice notes it.
    versions = {**fast["versions"], "openvino": "9999.0.0"}
    (second / "result.json").write_text(json.dumps({**fast, "versions": versions}))
    proc = sweep_here(tmp_path / "choose.toml", out)
    assert proc.returncode == 0, proc.stderr
    was = ref["versions"].get("openvino", "absent")
    assert (f"no choice: the latencies were measured with different library versions (openvino {was} on 1, "
            "9999.0.0 on 1); run this command with --remeasure N") in proc.stdout
    assert not (out / "choice.json").exists() and "chosen:" not in proc.stdout
    (tmp_path / "accept.toml").write_text((tmp_path / "choose.toml").read_text() + "accept_mixed_versions = true\n")
    proc = sweep_here(tmp_path / "accept.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert "chosen: unet-b4-d2-s64 (" in proc.stdout and "note: chosen over latencies measured with different" in proc.stdout
    assert json.loads((out / "choice.json").read_text())["mixed_versions"] == {"openvino": {was: 1, "9999.0.0": 1}}


def test_seeds_repeat_every_variant_and_the_recipe_seed_keeps_the_plain_id(tmp_path):
    """[grid] seed repeats each variant with those training seeds, seed-major (every variant's
    first run before any repeat); the recipe's seed keeps the id without a suffix (so a sweep
    that gains seeds keeps its runs); each point trains with its seed and its commands.sh train
    line rebuilds that TrainConfig."""
    import dataclasses

    from edgeseg.cli.train import command as train_command, config_from_options
    from edgeseg.sweep.commands import point_commands
    from edgeseg.sweep.config import load_sweep, train_config

    (tmp_path / "s.toml").write_text(SWEEP.replace("lr = 0.01", "lr = 0.01\nseed = 7").replace(
        "size = [64]", "size = [64]\nseed = [7, 2]"))
    sweep = load_sweep(tmp_path / "s.toml")
    assert [p.id for p in sweep.points] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64",
                                            "unet-b4-d2-s64-seed2", "mobile_unet-b4-d2-s64-seed2"]
    assert [p.variant for p in sweep.points] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"] * 2
    assert [train_config(sweep, p, tmp_path).seed for p in sweep.points] == [7, 7, 2, 2]
    assert sweep.choose == {}
    for point in (sweep.points[0], sweep.points[3]):
        line = next(ln for ln in point_commands(sweep, point, tmp_path) if ln.startswith("edgeseg train"))
        ctx = train_command.make_context("train", shlex.split(line)[2:])
        with ctx:
            rebuilt = config_from_options(ctx.params, None, ctx)
        assert dataclasses.asdict(rebuilt) == dataclasses.asdict(train_config(sweep, point, tmp_path / "run"))
    # Without [recipe] seed the recipe's seed is TrainConfig's, 0; a grid without 0 suffixes every id.
    (tmp_path / "t.toml").write_text(SWEEP.replace("size = [64]", "size = [64]\nseed = [0, 1]"))
    assert [p.id for p in load_sweep(tmp_path / "t.toml").points][1:3] == ["mobile_unet-b4-d2-s64", "unet-b4-d2-s64-seed1"]
    (tmp_path / "u.toml").write_text(SWEEP.replace("size = [64]", "size = [64]\nseed = [3]"))
    assert [p.id for p in load_sweep(tmp_path / "u.toml").points] == ["unet-b4-d2-s64-seed3", "mobile_unet-b4-d2-s64-seed3"]


def test_a_point_held_by_another_process_is_left_to_it(tmp_path):
    """Two sweep processes share one folder: a point whose lock another process holds is skipped,
    the rest runs, and a later run finishes the held point and reports every point."""
    import fcntl

    (tmp_path / "sweep.toml").write_text(SWEEP)
    out = tmp_path / "out"
    held, other = out / "points" / "unet-b4-d2-s64", out / "points" / "mobile_unet-b4-d2-s64"
    held.mkdir(parents=True)
    with open(held / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this test process plays the other sweep process
        proc = subprocess.run(_sweep_command(tmp_path / "sweep.toml", out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not (held / "run").exists() and (other / "result.json").is_file()
    assert "not in these reports yet: unet-b4-d2-s64" in proc.stdout
    assert [p["id"] for p in json.loads((out / "sweep.json").read_text())["points"]] == ["mobile_unet-b4-d2-s64"]
    before = (other / "result.json").read_bytes()

    proc = subprocess.run(_sweep_command(tmp_path / "sweep.toml", out), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (other / "result.json").read_bytes() == before and (held / "result.json").is_file()
    assert "not in these reports yet" not in proc.stdout
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["id"] for r in rows] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"]


def test_point_option_runs_only_the_named_points_and_remeasure_trains_nothing(tmp_path, assert_one_line_error,
                                                                               copy_mobile_point_sweep, sweep_here):
    """--point gives one process the named points (the long reference, say) and leaves the rest;
    --remeasure measures the finished points' latency again without training anything."""
    (tmp_path / "sweep.toml").write_text(SWEEP)
    # what `--point mobile_unet-b4-d2-s64` left (run once for the tests that start from it)
    out = copy_mobile_point_sweep(tmp_path / "out")
    assert (out / "points" / "mobile_unet-b4-d2-s64" / "result.json").is_file()
    assert not (out / "points" / "unet-b4-d2-s64").exists()
    assert [r["id"] for r in csv.DictReader((out / "sweep.csv").open())] == ["mobile_unet-b4-d2-s64"]

    proc = sweep_here(tmp_path / "sweep.toml", out, "--point", "unet-b8-d2-s64")
    assert_one_line_error(proc, "unet-b8-d2-s64 is not a point of this sweep; its points: unet-b4-d2-s64, "
                                "mobile_unet-b4-d2-s64")
    assert not (out / "points" / "unet-b4-d2-s64").exists()

    # --remeasure trains nothing: only the finished point is measured again, three rounds, and
    # keeps its median round; its Dice and run files stay as they were.
    done = out / "points" / "mobile_unet-b4-d2-s64"
    before = json.loads((done / "result.json").read_text())
    stamps = {p: p.stat().st_mtime_ns for p in (done / "run").iterdir()}
    proc = subprocess.run(_sweep_command(tmp_path / "sweep.toml", out) + ["--remeasure", "3"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    after = json.loads((done / "result.json").read_text())
    rounds = after["latency_rounds_ms_p50"]
    assert len(rounds) == 3 and after["latency_ms_p50"] == sorted(rounds)[1] > 0
    assert after["backend"] == after["latency_rounds_backend"][rounds.index(after["latency_ms_p50"])]
    # the deployed INT8 Dice follows the runner auto picked in the round kept (runners within noise)
    measured = {"backend", "latency_ms_p50", "model_ms_p50", "volume_slices_per_s", "volume_batch",
                "dice_int8", "dice_int8_per_case", "dice_int8_backend"}
    assert {k: v for k, v in after.items() if k in before and k not in measured} == \
        {k: v for k, v in before.items() if k not in measured}
    scored = before["dice_int8_runners"]
    deployed = after["backend"] if after["backend"] in scored else next(iter(scored))
    assert after["dice_int8_backend"] == deployed and after["dice_int8"] == scored[deployed]
    assert after["dice_int8_per_case"] == before["dice_int8_runners_per_case"][deployed]
    assert {p: p.stat().st_mtime_ns for p in (done / "run").iterdir()} == stamps
    assert not (out / "points" / "unet-b4-d2-s64").exists()
    [row] = list(csv.DictReader((out / "sweep.csv").open()))
    assert float(row["latency_ms_p50"]) == after["latency_ms_p50"]

    # The grid gains a seed and a rule: the folder is kept, the finished point is read, only the
    # named repeat trains (with its own seed); the reports take the variant's two runs together
    # and the rule, needing both seeds, chooses among variants that have them.
    grown = SWEEP.replace("size = [64]", "size = [64]\nseed = [0, 1]") + '\n[choose]\nreference = "mobile_unet-b4-d2-s64"\n'
    (tmp_path / "sweep.toml").write_text(grown)
    before = (done / "result.json").read_bytes()
    proc = subprocess.run(_sweep_command(tmp_path / "sweep.toml", out) + ["--point", "mobile_unet-b4-d2-s64-seed1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (done / "result.json").read_bytes() == before and not (out / "points" / "unet-b4-d2-s64").exists()
    repeat = json.loads((out / "points" / "mobile_unet-b4-d2-s64-seed1" / "result.json").read_text())
    assert repeat["seed"] == 1 and repeat["variant"] == "mobile_unet-b4-d2-s64"
    assert json.loads((out / "points" / "mobile_unet-b4-d2-s64-seed1" / "run" / "split.json").read_text())["seed"] == 1
    [variant] = list(csv.DictReader((out / "variants.csv").open()))
    runs = [after, repeat]
    assert variant["id"] == "mobile_unet-b4-d2-s64" and variant["runs"] == "2" and variant["seeds"] == "0 1"
    assert float(variant["dice_fp32"]) == pytest.approx(sum(r["dice_fp32"] for r in runs) / 2, abs=5e-5)
    assert float(variant["latency_ms_p50"]) == pytest.approx((after["latency_ms_p50"] + repeat["latency_ms_p50"]) / 2)
    assert "variants (mean over their runs" in proc.stdout and "2 run(s)" in proc.stdout
    choice = json.loads((out / "choice.json").read_text())
    assert choice["chosen"] == "mobile_unet-b4-d2-s64" and choice["runs"] == 2 and choice["min_runs"] == 2
    assert "--seed 1" in (out / "commands.sh").read_text()

    # a finished point's run trained on by hand (train --resume --epochs 4 on points/ID/run): its
    # result, bundle and latency are the 3-epoch run's, and were read as finished all the same
    metrics = done / "run" / "metrics.json"
    record = json.loads(metrics.read_text())
    record["history"].append({**record["history"][-1], "epoch": 4})  # what the fourth epoch appends
    metrics.write_text(json.dumps(record))
    proc = sweep_here(tmp_path / "sweep.toml", out)
    assert_one_line_error(proc, "point mobile_unet-b4-d2-s64's run was trained to 4 epochs after its result was "
                                "written at 3; remove ")


TWO_SWEEPS_IN_ONE_PROCESS = """
import subprocess, sys
from edgeseg.sweep.config import load_sweep
from edgeseg.sweep.run import run_sweep

class Killed(Exception):
    "Raised after the first point, as a kill would stop the sweep there."

def kill(result):
    raise Killed(result["id"])

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # as the tests of tiny models run
    sweep = load_sweep(sys.argv[1])
    try:
        run_sweep(sweep, sys.argv[2], after_point=kill)
        raise SystemExit("the first run_sweep was not stopped after its first point")
    except Killed as stopped:
        assert stopped.args == ("unet-b4-d2-s64",), stopped.args
    finished, elsewhere = run_sweep(sweep, sys.argv[2])
    assert [p["id"] for p in finished] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"] and not elsewhere
    # The corruption showed while the process waited, then collected and allocated.
    subprocess.run(["sleep", "12"], capture_output=True, text=True)
    import gc

    gc.collect()
    churn = [tuple(range(k % 50)) for k in range(300000)]
    print("ok", len(churn))
"""


def test_two_sweeps_in_one_process_leave_the_interpreter_intact(tmp_path):
    """Library use: run_sweep stopped by an exception after its first point, then run again in the
    same process. Before the latency measurement moved to a fresh process, this segfaulted some
    seconds after the second call returned in 3 of 5 runs here (and a script doing the same in
    nearly every run): the backend probe had released an OpenVINO runner in the process that had
    trained with DataLoader workers. Passing is not proof (the crash was intermittent); failing is."""
    (tmp_path / "sweep.toml").write_text(SWEEP)
    script = tmp_path / "two_sweeps.py"
    script.write_text(TWO_SWEEPS_IN_ONE_PROCESS)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "sweep.toml"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.startswith("ok 300000")


def test_a_named_training_recipe_under_the_sweep_keys_and_the_grid(tmp_path, assert_one_line_error, sweep_here):
    """[recipe] recipe = NAME starts each point from a training recipe (as `edgeseg train --recipe`);
    the sweep's own keys override its values and the grid overrides its model, width, depth and
    size; commands.sh's train line rebuilds the very TrainConfig the sweep trains; and a recipe edit
    that changes how the points train changes the sweep's identity, so such a folder is refused."""
    import dataclasses

    from edgeseg.cli.train import command as train_command, config_from_options
    from edgeseg.errors import DataError
    from edgeseg.sweep.commands import point_commands
    from edgeseg.sweep.config import load_sweep, train_config
    from edgeseg.sweep.run import check_sweep_folder

    recipe = tmp_path / "task.toml"
    recipe.write_text('name = "task"\nversion = 3\n[train]\nmodel = "unet"\nbase = 16\nfit = "pad"\nloss = "dice-ce"\n'
                      'class_weights = [0.5, 2.0]\nepochs = 40\naugment_p = 0.4\nwindow = [-100, 300]\n')
    text = SWEEP.replace("epochs = 3\n", f'recipe = "{recipe}"\nepochs = 3\nclass_weights = [0.25, 4]\n')
    (tmp_path / "sweep.toml").write_text(text)
    sweep = load_sweep(tmp_path / "sweep.toml")
    point = sweep.points[1]  # mobile_unet-b4-d2-s64
    cfg = train_config(sweep, point, tmp_path / "run")
    assert (cfg.model, cfg.base, cfg.depth, cfg.size) == ("mobile_unet", 4, 2, 64)  # the grid
    assert cfg.epochs == 3 and cfg.class_weights == [0.25, 4.0]  # the sweep's keys
    assert cfg.fit == "pad" and cfg.augment_p == 0.4 and cfg.window == (-100.0, 300.0)  # the recipe's
    assert cfg.recipe["name"] == "task" and cfg.recipe["version"] == 3

    train_line = next(ln for ln in point_commands(sweep, point, tmp_path) if ln.startswith("edgeseg train"))
    ctx = train_command.make_context("train", shlex.split(train_line)[2:])
    with ctx:
        from edgeseg.train.recipes import load_recipe

        rebuilt = config_from_options(ctx.params, load_recipe(ctx.params["recipe"]), ctx)
    assert dataclasses.asdict(rebuilt) == dataclasses.asdict(train_config(sweep, point, tmp_path / "run"))

    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"config": sweep.to_dict(), "points": []}))
    check_sweep_folder(load_sweep(tmp_path / "sweep.toml"), out)
    # A new version that changes only what the grid overrides keeps the folder; a training value does not.
    recipe.write_text(recipe.read_text().replace("version = 3", "version = 4").replace("base = 16", "base = 32"))
    check_sweep_folder(load_sweep(tmp_path / "sweep.toml"), out)
    recipe.write_text(recipe.read_text().replace("augment_p = 0.4", "augment_p = 0.5"))
    with pytest.raises(DataError, match="holds a different sweep"):
        check_sweep_folder(load_sweep(tmp_path / "sweep.toml"), out)

    (tmp_path / "bad.toml").write_text(SWEEP.replace("epochs = 3\n", 'recipe = "no-such-recipe"\nepochs = 3\n'))
    proc = sweep_here(tmp_path / "bad.toml", tmp_path / "bad-out")
    assert_one_line_error(proc, "[recipe] recipe: recipe 'no-such-recipe' is neither a file nor a known recipe")
    assert not (tmp_path / "bad-out").exists()


def test_results_from_before_seeds_are_read_with_the_seed_and_variant_of_their_point(tmp_path):
    """A result.json written before seeds were a grid axis has neither key: reading it fills them
    in from its point (the recipe's seed for a plain id, the grid's for a suffixed one)."""
    from edgeseg.sweep.config import load_sweep
    from edgeseg.sweep.run import finished_results

    (tmp_path / "s.toml").write_text(SWEEP.replace("lr = 0.01", "lr = 0.01\nseed = 4").replace(
        "size = [64]", "size = [64]\nseed = [4, 9]"))
    sweep = load_sweep(tmp_path / "s.toml")
    for pid in ("mobile_unet-b4-d2-s64", "unet-b4-d2-s64-seed9"):
        (tmp_path / "points" / pid).mkdir(parents=True)
        (tmp_path / "points" / pid / "result.json").write_text(json.dumps({"id": pid, "dice_fp32": 0.5}))
    got = [(r["id"], r["variant"], r["seed"]) for r in finished_results(sweep, tmp_path)]
    assert got == [("mobile_unet-b4-d2-s64", "mobile_unet-b4-d2-s64", 4), ("unet-b4-d2-s64-seed9", "unet-b4-d2-s64", 9)]
