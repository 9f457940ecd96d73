"""``edgeseg export`` from the command line: a bundle, or one error line and nothing written."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime.manifest import read_manifest, verify_artifacts

DATA = Path(__file__).parents[1] / "data"


def edgeseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_export_cli_writes_a_bundle_and_trt_absence_is_one_line(checkpoint, tmp_path):
    out = tmp_path / "b"
    proc = edgeseg("export", checkpoint, "--out", out, "--formats", "onnx", "--fp16", "--trt", "--max-batch", "2",
                   "--cache-dir", tmp_path / "cache", "--triton", tmp_path / "repo", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # --triton: the repository's ONNX is the bundle's, byte for byte
    assert (tmp_path / "repo" / "edgeseg" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert "max_batch_size: 2" in (tmp_path / "repo" / "edgeseg" / "config.pbtxt").read_text()
    manifest = read_manifest(out)
    verify_artifacts(out, manifest)
    assert {a.key for a in manifest.artifacts} >= {"onnx-fp32", "onnx-fp16"}
    trt_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("tensorrt:")]
    if manifest.artifact("tensorrt", "fp16") is None:
        assert len(trt_lines) == 1, proc.stdout
    assert "torch-float16-cpu" in proc.stdout  # the report names the FP16 emulation used
    if importlib.util.find_spec("edgeseg.export.tensorrt") is not None:
        script = (out / "trtexec.sh").read_text()
        assert "--onnx=model.fp16.onnx" in script and "--fp16" in script and "image:2x1x64x64" in script


def test_missing_checkpoint(tmp_path, assert_one_line_error):
    assert_one_line_error(edgeseg("export", tmp_path / "nope.pt", "--out", tmp_path / "b"), "checkpoint not found")
    assert not (tmp_path / "b").exists()


def test_corrupt_checkpoint(tmp_path, assert_one_line_error):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert_one_line_error(edgeseg("export", bad, "--out", tmp_path / "b"), "bad.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]


def test_int8_without_or_with_empty_calibration_data(checkpoint, tmp_path, assert_one_line_error):
    assert_one_line_error(edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8"), "--calib")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8", "--calib", empty), "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("flags, named", [
    (["--calib", "phantom:cases=2,size=64,slices=8"], "--calib sets"),
    (["--calib-method", "minmax", "--int8-scheme", "cpu"], "--calib-method, --int8-scheme set"),
    (["--profile", "gpu-fp16", "--calib-slices", "8"], "--calib-slices sets"),
])
def test_int8_settings_without_an_int8_graph_are_refused(checkpoint, tmp_path, flags, named, assert_one_line_error):
    """--calib without --int8 exported an FP32 bundle without a word: the user meant INT8."""
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", *flags)
    assert_one_line_error(proc, f"{named} up INT8, but this export writes no INT8 graph; add --int8")
    assert not (tmp_path / "b").exists()


def test_calibration_data_that_cannot_cover_the_window(checkpoint, tmp_path, assert_one_line_error):
    # slices whose pixels map the window [50, 200] HU cannot give the [0, 255] window the model uses
    folder = tmp_path / "slices"
    shutil.copytree(DATA / "msd_liver_slices", folder)
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8", "--calib", folder,
                   "--intensity", "window:50,200")
    assert_one_line_error(proc, "window [0, 255]")
    assert not (tmp_path / "b").exists()


def test_unwritable_output(checkpoint, tmp_path, assert_one_line_error):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_line_error(edgeseg("export", checkpoint, "--out", blocker / "b"), "not a writable folder")
    assert blocker.read_text() == "x"


def test_existing_bundle_needs_force(bundle, checkpoint, tmp_path, assert_one_line_error):
    out = tmp_path / "b"
    shutil.copytree(bundle["bundle"], out)
    before = (out / "manifest.json").read_bytes()
    assert_one_line_error(edgeseg("export", checkpoint, "--out", out, "--formats", "onnx"), "pass --overwrite")
    assert (out / "manifest.json").read_bytes() == before and (out / "model.ts").is_file()
    # --force, the earlier name of --overwrite, still replaces it
    proc = edgeseg("export", checkpoint, "--out", out, "--formats", "onnx", "--force", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "parity.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_force_never_replaces_a_folder_that_is_not_a_bundle(checkpoint, tmp_path, assert_one_line_error):
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_one_line_error(edgeseg("export", checkpoint, "--out", out, "--force"), "not a bundle")
    assert (out / "notes.txt").read_text() == "mine"


def test_truth_gate_metric_on_unlabelled_verification_data(checkpoint, tmp_path, assert_one_line_error):
    # A phantom volume's image without its label file: nothing to judge Dice against.
    done = edgeseg("data", "synth", "--out", tmp_path / "phantom", "--cases", 1, "--size", 64, "--slices", 4, "--quiet")
    assert done.returncode == 0, done.stderr
    image = tmp_path / "phantom" / "imagesTr" / "case_000.nii.gz"
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--formats", "onnx", "--verify-data", image,
                   "--gate-metric", "truth")
    assert_one_line_error(proc, "--gate-metric truth needs labelled held-out slices")
    assert not (tmp_path / "b").exists()


def test_negative_structure_size(checkpoint, tmp_path, assert_one_line_error):
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--formats", "onnx", "--structure-px", "-1")
    assert_one_line_error(proc, "structure-px must be an integer >= 0, got -1")
    assert not (tmp_path / "b").exists()


def test_force_never_deletes_the_exports_own_inputs(bundle, checkpoint, tmp_path, assert_one_line_error):
    """--force replaces the old bundle whole: a checkpoint or calibration data kept in it would go
    with it, after the export had read them."""
    out = tmp_path / "b"
    shutil.copytree(bundle["bundle"], out)
    inside = out / "best.pt"
    shutil.copyfile(checkpoint, inside)
    assert_one_line_error(edgeseg("export", inside, "--out", out, "--formats", "onnx", "--force"),
                          f"output {out} holds the checkpoint {inside}")
    calib = out / "calib"
    shutil.copytree(DATA / "msd_liver_slices", calib)
    assert_one_line_error(edgeseg("export", checkpoint, "--out", out, "--force", "--int8", "--calib", calib),
                          f"output {out} holds the calibration data {calib}")
    assert inside.read_bytes() == checkpoint.read_bytes() and (calib / "images").is_dir()
    assert (out / "model.ts").is_file()


def test_unwritable_cache_fails_before_any_work(checkpoint, tmp_path, assert_one_line_error):
    """The INT8 cache is written after calibration; an unwritable --cache-dir is named up front,
    not reported at the end as the bundle that could not be written."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8", "--calib", DATA / "msd_liver_slices",
                   "--cache-dir", blocker / "cache")
    assert_one_line_error(proc, f"cannot write the export cache folder (--cache-dir) {blocker / 'cache'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_too_few_calibration_slices_are_refused_naming_the_count_and_the_minimum(checkpoint, tmp_path,
                                                                                 assert_one_line_error):
    """One calibration slice sets every activation range from one image; the gate, on a few
    held-out slices, may pass ranges that clip the rest of a scan."""
    one = tmp_path / "one.npy"
    np.save(one, np.zeros((1, 1, 64, 64), np.float32))
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8", "--calib", one, "--quiet")
    assert_one_line_error(proc, f"calibration data {one} gives 1 slice; INT8 calibration needs at least 16")
    proc = edgeseg("export", checkpoint, "--out", tmp_path / "b", "--int8", "--calib", one, "--calib-slices", "4")
    assert_one_line_error(proc, "calib-slices 4 is below the 16 slices INT8 calibration needs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npy"]
