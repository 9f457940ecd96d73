"""The bare runtime (no torch, no image-format libraries) predicts NumPy input, and names the
``io`` extra when asked for a format it cannot read or write."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

BLOCKED = ("torch", "nibabel", "pydicom", "PIL", "nrrd", "highdicom", "scipy", "matplotlib")


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
