"""The bare runtime (no torch, no image-format libraries) predicts NumPy input, and names the
``io`` extra when asked for a format it cannot read or write."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

BLOCKED = ("torch", "nibabel", "pydicom", "PIL", "nrrd", "highdicom", "scipy", "matplotlib")

BLOCKER = textwrap.dedent(f"""
    import sys

    class _Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError(name + " is not installed here")

    sys.meta_path.insert(0, _Absent())
""")


def _edgeseg(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]),
               EDGESEG_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env)


def test_bare_runtime_predicts_npy(bundle_dir, tmp_path):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg(["predict", str(bundle_dir), "in.npy", "--out", "out.npy", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "out.npy").shape == (2, 40, 40)


def test_bare_runtime_names_the_io_extra_for_nifti(bundle_dir, tmp_path):
    np.save(tmp_path / "in.npy", np.full((2, 40, 40), -1000, np.int16))
    done = _edgeseg(["predict", str(bundle_dir), "in.npy", "--out", "out.nii.gz", "--quiet"], tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "edgeseg: error: NIfTI output needs the 'nibabel' package: pip install 'edgeseg[io]'"]
    assert not list(tmp_path.glob("out*"))


def test_bare_runtime_names_the_io_extra_for_dicom(bundle_dir, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"\0" * 128 + b"DICM")
    done = _edgeseg(["predict", str(bundle_dir), str(series), "--out", "out.npy", "--quiet"], tmp_path)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1
    assert "pip install 'edgeseg[io]'" in done.stderr
    assert not (tmp_path / "out.npy").exists()
