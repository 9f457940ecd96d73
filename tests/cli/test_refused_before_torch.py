"""A setting the command refuses anyway is refused before torch is imported (a second or more of
start-up, before any data is read): in a process where torch cannot be imported the refusal is
still the setting's own line, not the missing-torch one, and nothing is written."""

from pathlib import Path

import pytest

TINY = ["--data", "phantom:cases=4,size=64,slices=16", "--size", "64", "--base", "4", "--depth", "2", "--epochs", "1",
        "--quiet"]


@pytest.mark.parametrize(("args", "message"), [
    (["train", *TINY, "--lr", "inf"], "learning rate must be a finite number > 0, got inf"),
    (["train", *TINY, "--labels", "liver=1,kidney=1"], "source label value(s) [1] are given to more than one class"),
    (["cv", *TINY, "--folds", "2", "--weight-decay", "nan"], "weight decay must be a finite number >= 0, got nan"),
    (["cv", *TINY, "--folds", "2", "--val-fraction", "0.2"], "--val-fraction does not apply to cv"),
    (["export", "absent.pt", "--calib", "phantom"], "--calib sets up INT8, but this export writes no INT8 graph"),
    (["export", "absent.pt", "--int8"], "--int8 needs calibration data: pass --calib DATA"),
])
def test_a_refused_setting_never_waits_for_torch(tmp_path, python_without, assert_one_line_error, args, message):
    proc = python_without(["-m", "edgeseg.cli", *args, "--out", str(tmp_path / "out")], tmp_path)
    assert_one_line_error(proc, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["train", "cv"])
def test_a_mistyped_data_source_never_waits_for_torch(tmp_path, python_without, assert_one_line_error, command):
    """--data is checked by name before the model and the slice store are set up: a folder that
    is not there, one with no images, a phantom spec with a bad option."""
    (tmp_path / "empty").mkdir()
    folds = ["--folds", "2"] if command == "cv" else []
    for data, message in (("nope", "data folder not found: nope"),
                          ("empty", f"no images found in {tmp_path / 'empty'} (no slice folder, NIfTI or DICOM"),
                          ("phantom:cases=x", "phantom option cases must be an integer, got 'x'")):
        proc = python_without(["-m", "edgeseg.cli", command, "--data", data, *folds, "--out", str(tmp_path / "out")],
                              tmp_path)
        assert_one_line_error(proc, message)
        assert not (tmp_path / "out").exists()


def test_a_refused_sweep_file_or_flags_never_waits_for_torch(tmp_path, python_without, assert_one_line_error):
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('[recipe]\nepochs = 3\n[grid]\nbase = [4]\n')
    proc = python_without(["-m", "edgeseg.cli", "sweep", str(sweep), "--out", str(tmp_path / "out")], tmp_path)
    assert_one_line_error(proc, "[recipe] needs data")
    sweep.write_text((Path(__file__).parents[1] / "sweep" / "tiny_sweep.toml").read_text())
    proc = python_without(["-m", "edgeseg.cli", "sweep", str(sweep), "--rescore", "--regate", "--out",
                           str(tmp_path / "out")], tmp_path)
    assert_one_line_error(proc, "--status, --regate, --rescore and --remeasure do not go together: give one")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [["--status"], ["--rescore"], ["--regate"], ["--remeasure", "1"], []])
def test_a_sweep_folder_refused_never_waits_for_torch(tmp_path, python_without, assert_one_line_error, mode):
    """A redo of a folder that holds no sweep, or a sweep into a folder of other files, is refused
    by what the folder holds, not after torch's import."""
    sweep = tmp_path / "sweep.toml"
    sweep.write_text((Path(__file__).parents[1] / "sweep" / "tiny_sweep.toml").read_text())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    proc = python_without(["-m", "edgeseg.cli", "sweep", str(sweep), *mode, "--out", str(out)], tmp_path)
    assert_one_line_error(proc, f"{out} holds no sweep (no sweep.json); run the sweep first" if mode else
                          f"sweep output {out} exists and is not a sweep folder; choose another --out")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
