"""NIfTI headers with extreme transform fields, found by setting header fields to extreme values
and checking every file read against nibabel's data and affine.

An sform axis of 1e-30 mm was read, reported as a voxel size of 0 mm, and refused only after
segmenting, by the NIfTI writer; and nibabel's notes on the fields it repairs were printed as bare
lines of its own before the error line (or a successful command's output).
"""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from edgeseg.data.nifti import read_nifti  # noqa: E402
from edgeseg.errors import DataError  # noqa: E402

QFORM_CODE_AT = 252


def _nifti(path, x_step: float = 1.0, qform_code: int = 1):
    """A 4x5x3 int16 NIfTI with sform x axis ``x_step`` mm, and its qform_code field set as given."""
    affine = np.diag([x_step, 1.0, 2.0, 1.0])
    image = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(4, 5, 3), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    nib.save(image, path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, QFORM_CODE_AT, qform_code)
    path.write_bytes(bytes(data))
    return path


def test_a_voxel_axis_below_a_micrometre_is_refused_naming_the_file(tmp_path):
    """Without a qform to fall back to (one beside it: tests/readers/test_nifti_voxel_sizes.py)."""
    path = _nifti(tmp_path / "thin.nii", x_step=1e-30, qform_code=0)
    with pytest.raises(DataError, match=r"thin\.nii: header field sform \(sform_code 1\) gives a voxel size below "
                                        r"1e-6 mm \(voxel axes of 1e-30, 1, 2 mm\), and qform_code is 0"):
        read_nifti(path)
    assert read_nifti(_nifti(tmp_path / "fine.nii", x_step=0.001)).spacing == (2.0, 1.0, 0.001)


def _edgeseg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_nibabel_notes_do_not_precede_the_error_line(tmp_path, assert_one_line_error):
    path = _nifti(tmp_path / "thin.nii", x_step=1e-30, qform_code=255)
    assert_one_line_error(_edgeseg("data", "info", path, "--quiet"), "voxel size below 1e-6 mm")


def test_nibabel_notes_are_one_warning_line_after_success(tmp_path):
    done = _edgeseg("data", "info", _nifti(tmp_path / "ok.nii", qform_code=255), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["edgeseg: warning: nibabel.global: qform_code 255 not valid; setting to 0"]
    assert "3x5x4" in done.stdout.split()
