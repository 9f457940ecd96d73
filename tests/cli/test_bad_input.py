"""Each bad input the issue names gives one 'edgeseg: error:' line and a non-zero exit."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).parents[1] / "data"


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture
def slices(tmp_path):
    folder = tmp_path / "slices"
    shutil.copytree(DATA / "msd_liver_slices", folder)
    return folder


def test_image_without_mask(slices, assert_one_line_error):
    victim = sorted((slices / "masks").iterdir())[0]
    victim.unlink()
    assert_one_line_error(edgeseg("data", "info", slices, "--quiet"), victim.name)


def test_mask_of_another_size(slices, assert_one_line_error):
    from PIL import Image

    victim = sorted((slices / "masks").iterdir())[0]
    Image.new("L", (100, 80)).save(victim, format="JPEG")
    assert_one_line_error(edgeseg("train", "--data", slices, "--out", slices.parent / "run", "--quiet"), "size")


def test_non_ct_dicom(tmp_path, assert_one_line_error):
    import pydicom

    series = tmp_path / "mr"
    shutil.copytree(DATA / "dcmqi_ct_liver" / "ct-3slice", series)
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    assert_one_line_error(edgeseg("data", "info", series, "--quiet"), "not CT")


def test_one_mr_file_in_a_ct_series(tmp_path, assert_one_line_error):
    """The modality is checked on every file, not only on the first one read."""
    import pydicom

    series = tmp_path / "mixed"
    shutil.copytree(DATA / "dcmqi_ct_liver" / "ct-3slice", series)
    victim = series / "02.dcm"
    ds = pydicom.dcmread(victim)
    ds.Modality = "MR"
    ds.save_as(victim)
    assert_one_line_error(edgeseg("data", "info", series, "--quiet"), f"in {series}: 02.dcm is MR, not CT")


def test_truncated_dicom(tmp_path, assert_one_line_error):
    series = tmp_path / "cut"
    shutil.copytree(DATA / "dcmqi_ct_liver" / "ct-3slice", series)
    victim = series / "02.dcm"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert_one_line_error(edgeseg("data", "info", series, "--quiet"), "02.dcm")


def test_truncated_nifti(tmp_path, assert_one_line_error):
    src = DATA / "totalseg_example_ct" / "example_ct_sm.nii.gz"
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    assert_one_line_error(edgeseg("data", "info", cut, "--quiet"), "cut.nii.gz")


@pytest.mark.parametrize("command", [["train"], ["evaluate", "x.pt", "--data", "phantom"]])
def test_training_commands_without_torch_name_the_extra(command, assert_one_line_error):
    code = "import sys; sys.modules['torch'] = None; from edgeseg.cli.main import cli; cli()"
    proc = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "pip install 'edgeseg[train]'")


def test_data_info_pairs_a_series_with_a_label_file():
    proc = edgeseg("data", "info", DATA / "dcmqi_ct_liver" / "ct-3slice", "--label-file",
                   DATA / "dcmqi_ct_liver" / "liver_seg.nrrd", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "1:107098" in proc.stdout  # liver voxels of the NRRD, counted independently in tests/readers


def test_label_file_of_another_shape_is_refused(assert_one_line_error):
    proc = edgeseg("data", "info", DATA / "dcmqi_ct_liver" / "ct-3slice", "--label-file",
                   DATA / "totalseg_example_ct" / "example_seg.nii.gz", "--quiet")
    assert_one_line_error(proc, "example_seg.nii.gz")


@pytest.mark.parametrize("args, message", [
    (["data", "info", "", "--quiet"], "SOURCE is empty ('')"),
    (["data", "info", " ", "--quiet"], "SOURCE is empty (' ')"),
    (["evaluate", "run/best.pt", "--data", "", "--quiet"], "--data is empty ('')"),
    (["train", "--data", "", "--out", "run2", "--size", 64, "--base", 4, "--depth", 2, "--epochs", 1, "--quiet"],
     "--data is empty ('')"),
    (["predict", "bundle", "", "--out", "mask.nii.gz"], "INPUT is empty ('')"),
])
def test_an_empty_data_source_is_refused_not_read_as_the_current_folder(tmp_path, args, message,
                                                                        assert_one_line_error):
    """Run inside a phantom dataset folder: an empty argument, read as '.', would be that data."""
    data = tmp_path / "phantom"
    assert edgeseg("data", "synth", "--out", data, "--cases", 2, "--size", 64, "--slices", 4, "--quiet").returncode == 0
    (data / "bundle").mkdir()
    (data / "run").mkdir()
    (data / "run" / "best.pt").write_bytes(b"not read")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=data)
    assert_one_line_error(proc, message)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


@pytest.mark.parametrize("workers", ["-1", "-5"])
def test_train_refuses_a_negative_workers_count_as_a_usage_error(tmp_path, workers):
    """--workers is a count: -1 (the option's hidden default) ran as the default; now every negative
    count is a one-line usage error naming the option, before the data is looked at."""
    out = tmp_path / "run"
    result = edgeseg("train", "--data", tmp_path / "no-such-data", "--workers", workers, "--out", out)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0] and workers in lines[0] and "x>=0" in lines[0], result.stderr
    assert not out.exists()
    shown = edgeseg("train", "--help").stdout
    assert "x>=0" in shown.split("--workers", 1)[1].split("--foreground-share", 1)[0]
