"""The bare runtime (no torch, no image-format libraries, no onnx) predicts NumPy input and
inspects a bundle, and names the extra to install (and the distribution, as pip spells it) when
asked for something it cannot do."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

BLOCKED = ("torch", "nibabel", "pydicom", "PIL", "nrrd", "highdicom", "scipy", "matplotlib", "onnx",
           "tritonclient", "google")


@pytest.fixture
def _edgeseg(python_without):
    def run(args: list[str], tmp_path) -> subprocess.CompletedProcess:
        return python_without(["-m", "edgeseg.cli", *args], tmp_path, absent=BLOCKED)
    return run


def test_bare_runtime_predicts_npy(bundle_dir, tmp_path, _edgeseg):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg(["predict", str(bundle_dir), "in.npy", "--out", "out.npy", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "out.npy").shape == (2, 40, 40)


def test_bare_runtime_names_the_io_extra_for_nifti(bundle_dir, tmp_path, _edgeseg):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg(["predict", str(bundle_dir), "in.npy", "--out", "out.nii.gz", "--quiet"], tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "edgeseg: error: NIfTI output needs the 'nibabel' package: pip install 'edgeseg[io]'"]
    assert not list(tmp_path.glob("out*"))


def test_bare_runtime_names_the_io_extra_for_dicom(bundle_dir, tmp_path, _edgeseg):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 128 + b"DICM")
    done = _edgeseg(["predict", str(bundle_dir), str(series), "--out", "out.npy", "--quiet"], tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1
    assert "pip install 'edgeseg[io]'" in done.stderr
    assert not (tmp_path / "out.npy").exists()


def test_bare_runtime_tells_a_dicom_file_from_an_unknown_one(bundle_dir, tmp_path, _edgeseg):
    """A DICOM file is an input (an Enhanced CT holds a series), which needs the io extra; a file of
    no known kind is still refused as such, not as needing pydicom to be told."""
    (tmp_path / "e.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "notes.txt").write_text("not an image")
    done = _edgeseg(["predict", str(bundle_dir), "e.dcm", "--out", "out.npy", "--quiet"], tmp_path)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1
    assert "pip install 'edgeseg[io]'" in done.stderr
    done = _edgeseg(["predict", str(bundle_dir), "notes.txt", "--out", "out.npy", "--quiet"], tmp_path)
    assert done.stderr.strip().splitlines() == [
        "edgeseg: error: cannot read notes.txt: expected a DICOM series folder or Enhanced CT file, .nii/.nii.gz, "
        ".png/.jpg or .npy"]


def test_bare_runtime_inspects_a_bundle(bundle_dir, tmp_path, _edgeseg):
    """inspect reached the parity gate's module, which imported the data readers (edgeseg[io])."""
    done = _edgeseg(["inspect", str(bundle_dir)], tmp_path)
    assert done.returncode == 0, done.stderr
    [row] = [line.split() for line in done.stdout.splitlines() if line.split()[:2] == ["onnx-fp32", "model.onnx"]]
    assert row[4] == "ok", done.stdout  # the fresh hash check of model.onnx
    assert "parity vs pytorch-fp32" in done.stdout


def test_bare_runtime_names_pillow_not_its_import_name(bundle_dir, tmp_path, _edgeseg, assert_one_line_error):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg(["predict", str(bundle_dir), "in.npy", "--out", "out.png", "--quiet"], tmp_path)
    assert_one_line_error(done, "PNG output needs the 'Pillow' package: pip install 'edgeseg[io]'")
    assert not list(tmp_path.glob("out*"))


def test_bare_runtime_bench_png_names_the_extra_before_measuring(bundle_dir, tmp_path, _edgeseg,
                                                                   assert_one_line_error):
    """Without matplotlib, --png was a ModuleNotFoundError traceback after the whole measurement."""
    done = _edgeseg(["bench", str(bundle_dir), "--size", "64", "--batch", "1", "--runs", "1", "--warmup", "0",
                     "--no-cold-start", "--png", "b.png", "--json", "b.json"], tmp_path)
    assert_one_line_error(done, "edgeseg bench --png needs the 'matplotlib' package: pip install 'edgeseg[train]'")
    assert done.stdout == "" and not list(tmp_path.glob("b.*"))


def test_bare_runtime_triton_names_the_triton_extra(bundle_dir, tmp_path, _edgeseg, assert_one_line_error):
    """The config check named edgeseg[dev], the test tooling, as what to install."""
    done = _edgeseg(["triton", str(bundle_dir), "repo"], tmp_path)
    assert_one_line_error(done, "needs the 'tritonclient' package: pip install 'edgeseg[triton]'")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("outputs", [["--out", "out.png"], ["--out", "out.npy", "--overlay", "overlay.png"]])
def test_predict_names_a_missing_png_writer_before_segmenting(bundle_dir, tmp_path, python_without, outputs,
                                                              assert_one_line_error):
    """Without Pillow, PNG output (or a PNG overlay beside an NPY) was found unwritable only after
    the bundle had loaded and every slice was segmented, and the NPY was left without its overlay.
    Not --quiet: the backend's log lines would show that the bundle was loaded."""
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = python_without(["-m", "edgeseg.cli", "predict", str(bundle_dir), "in.npy", *outputs], tmp_path,
                          absent=("PIL",))
    assert_one_line_error(done, "PNG output needs the 'Pillow' package: pip install 'edgeseg[io]'")
    assert done.stdout == "" and not list(tmp_path.glob("out*")) and not list(tmp_path.glob("overlay*"))
