"""The sweep file: what `edgeseg sweep` refuses before any work (one line, nothing written), and
the folder of another sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()


@pytest.mark.parametrize("edit, fragment", [
    (("epochs = 3", "epochs = 3\nepoch = 4"), "unknown key 'epoch' in [recipe]"),
    (('"mobile_unet"]', '"segformer"]'), "unknown architecture(s) ['segformer']"),
    (("[measure]", "[measur]"), "unknown section(s) ['measur']"),
    (("[measure]", '[choose]\nreference = "unet-b9-d2-s64"\n\n[measure]'),
     "[choose] reference 'unet-b9-d2-s64' is not a variant of the grid"),
    (("[measure]", '[choose]\nreference = "unet-b4-d2-s64-seed1"\n\n[measure]'),
     "[choose] reference 'unet-b4-d2-s64-seed1' is not a variant of the grid"),
    (("[measure]", '[choose]\nreference = "unet-b4-d2-s64"\nmin_runs = 2\n\n[measure]'),
     "[choose] min_runs must be between 1 and the grid's 1 seed(s), got 2"),
    (("size = [64]", "size = [64]\nseed = [0, -1]"), "[grid] seed must list non-negative integers, got [0, -1]"),
    (("size = [64]", "size = [64]\nseed = []"), "[grid] seed must list non-negative integers, got []"),
    (("size = [64]", "size = [64]\nseed = [1, 1]"), "[grid] lists a value twice"),
    (("[measure]", '[choose]\nreference = "unet-b4-d2-s64"\nmax_loss = 0.01\n\n[measure]'),
     "unknown key 'max_loss' in [choose]"),
    (("size = [64]", "size = [66]"), "size 66 is not divisible by 2**depth = 4"),
    (("lr = 0.01", 'lr = "fast"'), "[recipe] lr must be a number, got 'fast'"),
    # a TOML boolean is not a number (Python's bool is an int): each was read as 1
    (("calib_slices = 16", "calib_slices = true"), "sweep.toml: [export] calib_slices must be an integer, got True"),
    (("max_batch = 2", "max_batch = true"), "sweep.toml: [export] max_batch must be an integer, got True"),
    (("epochs = 3", "epochs = true"), "sweep.toml: [recipe] epochs must be an integer, got True"),
    (("augment = false", "augment = false\nwindow = [true, 200]"),
     "point unet-b4-d2-s64: [recipe] window must be two numbers [LO, HI], got [True, 200]"),
    (("augment = false", "augment = false\nclass_weights = [1, true]"),
     "point unet-b4-d2-s64: [recipe] class_weights must be a list of numbers, got [1, True]"),
    (("augment = false", "augment = 1"), "sweep.toml: [recipe] augment must be true or false, got 1"),
    (('"mobile_unet"]', '["mobile_unet"]]'), "[grid] model must list architecture names"),
    (("max_batch = 2", 'max_batch = 2\ngate_metric = "labels"'), "[export] gate metric must be one of"),
    # these were found only after a point had trained (a traceback, or sweep.json already written)
    (("runs = 2", "runs = 0"), "[measure] runs must be >= 1, got 0"),
    (("warmup = 1", "warmup = -1"), "[measure] warmup must be >= 0, got -1"),
    (("volume_slices = 4", "volume_slices = 0"), "[measure] volume_slices must be >= 1, got 0"),
    (("slice_size = 128", "slice_size = 9000"), "[measure] slice_size must be between 2 and 8192, got 9000"),
    (("volume_slices = 4\nthreads = 1", "volume_slices = 4\nthreads = -1"),
     "[measure] threads must be between 0 and 1024, got -1"),
    (("augment = false", "augment = false\nwindow = [200, -100]"),
     "point unet-b4-d2-s64: window low must be below high, got low=200.0 high=-100.0"),
])
def test_bad_sweep_file_is_one_line_error_and_writes_nothing(tmp_path, edit, fragment, assert_one_line_error):
    (tmp_path / "sweep.toml").write_text(SWEEP.replace(*edit))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "sweep", str(tmp_path / "sweep.toml"), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out").exists()


def test_a_folder_of_another_sweep_is_refused(tmp_path):
    from edgeseg.errors import DataError
    from edgeseg.sweep.config import load_sweep
    from edgeseg.sweep.run import check_sweep_folder

    (tmp_path / "a.toml").write_text(SWEEP)
    (tmp_path / "b.toml").write_text(SWEEP.replace("epochs = 3", "epochs = 4"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"config": load_sweep(tmp_path / "a.toml").to_dict(), "points": []}))
    check_sweep_folder(load_sweep(tmp_path / "a.toml"), out)
    with pytest.raises(DataError, match="holds a different sweep"):
        check_sweep_folder(load_sweep(tmp_path / "b.toml"), out)
    # A grid that grows (another width, more seeds) keeps the folder: its points are named by what the grid sets.
    (tmp_path / "c.toml").write_text(SWEEP.replace("base = [4]", "base = [4, 8]").replace("size = [64]", "size = [64]\nseed = [0, 1]"))
    check_sweep_folder(load_sweep(tmp_path / "c.toml"), out)
    (tmp_path / "d.toml").write_text(SWEEP.replace("size = [64]", "size = [64]\nseed = [0, 1]").replace("epochs = 3", "epochs = 4"))
    with pytest.raises(DataError, match="holds a different sweep"):
        check_sweep_folder(load_sweep(tmp_path / "d.toml"), out)


def test_a_sweep_file_takes_choices_in_any_case_and_records_them_as_the_command_line_does(tmp_path):
    """fit = "PAD" in [recipe] was refused with the point's error while --fit PAD trains; the
    folder records each choice in one spelling, so the same sweep typed either way is the same."""
    from edgeseg.sweep.config import export_settings, load_sweep

    quiet = SWEEP.replace("augment = false", 'augment = false\nfit = "pad"\namp = "off"\nloss = "dice-focal"')
    quiet = quiet.replace("max_batch = 2", 'max_batch = 2\ngate_metric = "truth"')
    loud = quiet.replace('"pad"', '"PAD"').replace('"off"', '"Off"').replace('"dice-focal"', '"Dice-Focal"')
    loud = loud.replace('"truth"', '"Truth"').replace('["unet", "mobile_unet"]', '["UNet", "Mobile_UNet"]')
    (tmp_path / "quiet.toml").write_text(quiet)
    (tmp_path / "loud.toml").write_text(loud)
    sweep = load_sweep(tmp_path / "loud.toml")
    assert [p.id for p in sweep.points] == ["unet-b4-d2-s64", "mobile_unet-b4-d2-s64"]
    assert (sweep.recipe["fit"], sweep.recipe["amp"], sweep.recipe["loss"]) == ("pad", "off", "dice-focal")
    assert export_settings(sweep)[0].gate_metric == "truth"
    assert sweep.to_dict() == load_sweep(tmp_path / "quiet.toml").to_dict()



def _sweep_cli(sweep_file, out, *extra):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
                           *extra], capture_output=True, text=True)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_sweep_of_an_old_file_with_fewer_calibration_slices_is_read_and_not_extended(tmp_path, assert_one_line_error):
    """tiny_sweep.toml as it was before edgeseg refused INT8 calibration from fewer than 16 slices
    (calib_slices = 8, up to the parent of commit 1cb73dd, 2026-12-06), and the folder it made,
    whose sweep.json records that value. Its finished points are read and measured again (the
    file was refused outright, so the folder could not be reported or remeasured, and raising the
    value makes another sweep); a point still to export, or a new folder, is refused before any
    work, saying what to do."""
    one_point = SWEEP.replace('model = ["unet", "mobile_unet"]', 'model = ["unet"]')
    (tmp_path / "new.toml").write_text(one_point)
    (tmp_path / "old.toml").write_text(one_point.replace("calib_slices = 16", "calib_slices = 8"))
    remedy = "set calib_slices to 16 or more and run the sweep into a new --out"

    proc = _sweep_cli(tmp_path / "old.toml", tmp_path / "fresh")
    assert_one_line_error(proc, "[export] calib-slices 8 is below the 16 slices INT8 calibration needs at least")
    assert remedy in proc.stderr and not (tmp_path / "fresh").exists()

    out = tmp_path / "out"
    assert _sweep_cli(tmp_path / "new.toml", out).returncode == 0
    record = json.loads((out / "sweep.json").read_text())
    record["config"]["export"]["calib_slices"] = 8  # as the old edgeseg recorded the old file
    (out / "sweep.json").write_text(json.dumps(record))
    result = out / "points" / "unet-b4-d2-s64" / "result.json"
    before = result.read_bytes()

    proc = _sweep_cli(tmp_path / "old.toml", out)
    assert proc.returncode == 0, proc.stderr
    assert result.read_bytes() == before and (out / "sweep.csv").is_file()
    assert "the finished points were calibrated with it" in proc.stderr
    proc = _sweep_cli(tmp_path / "old.toml", out, "--remeasure", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result.read_text())["id"] == "unet-b4-d2-s64"

    result.unlink()  # a point still to train and export: refused before it trains
    stamps = {p: p.stat().st_mtime_ns for p in (result.parent / "run").iterdir()}
    proc = _sweep_cli(tmp_path / "old.toml", out)
    assert_one_line_error(proc, remedy)
    assert {p: p.stat().st_mtime_ns for p in (result.parent / "run").iterdir()} == stamps
    assert not result.exists()
