"""NIfTI files whose sform places no volume (its voxel axes singular, or NaN) beside a usable
qform, written by nibabel. Such a file was refused with "affine has no usable orientation
(degenerate axes)" or "qform/sform give a non-finite affine", naming neither field; it is now
read by its qform, with one warning naming sform_code and qform_code, the labels are written
placed as it was read, and where neither transform is usable the refusal names the field(s).
The oracle is nibabel's own qform and affine functions."""

from __future__ import annotations

import logging
import struct
import subprocess
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from edgeseg.data.nifti import read_nifti  # noqa: E402
from edgeseg.errors import DataError  # noqa: E402
from edgeseg.runtime.writers import write_nifti  # noqa: E402

# an oblique qform (a rotation about z), 0.8 x 0.7 x 2.5 mm voxels
ANGLE = np.deg2rad(20)
QFORM = np.array([[0.8 * np.cos(ANGLE), -0.7 * np.sin(ANGLE), 0.0, -30.0],
                  [0.8 * np.sin(ANGLE), 0.7 * np.cos(ANGLE), 0.0, 12.0],
                  [0.0, 0.0, 2.5, -50.0],
                  [0.0, 0.0, 0.0, 1.0]])
BRIGHT = (5, 2, 3)  # the one bright voxel, (i, j, k) as stored


def _sform(kind: str) -> np.ndarray:
    sform = QFORM.copy()
    if kind == "singular":
        sform[:3, 2] = 0.0  # the slice axis lost: every slice at one place
    elif kind == "nan":
        sform[0, 0] = np.nan
    return sform


# byte offsets of NIfTI-1 header fields (float32, little-endian as nibabel writes here)
PIXDIM_3_AT, QOFFSET_X_AT, SROW_AT = 88, 268, 280


def _patch(path, sform: np.ndarray, qoffset_x: float = QFORM[0, 3]) -> None:
    """Set the header's srow_x/y/z to ``sform`` and qoffset_x (the qform's x offset) in place:
    nibabel will not save a NaN or singular matrix from an image's affine."""
    data = bytearray(path.read_bytes())
    struct.pack_into("<12f", data, SROW_AT, *sform[:3].ravel())
    struct.pack_into("<f", data, QOFFSET_X_AT, qoffset_x)
    path.write_bytes(bytes(data))


def _write(path, sform_kind: str, sform_code: int = 2, qform_code: int = 1, qform_x: float = QFORM[0, 3]):
    """A 7x6x5 file with ``QFORM`` (its x offset ``qform_x``) and an sform of ``sform_kind``."""
    data = np.zeros((7, 6, 5), dtype=np.int16)
    data[BRIGHT] = 1000
    image = nib.Nifti1Image(data, QFORM)
    image.header.set_qform(QFORM, code=qform_code)
    image.header.set_sform(QFORM, code=sform_code)
    nib.save(image, path)
    _patch(path, _sform(sform_kind), qform_x)
    return path


def _world_of_bright(volume) -> np.ndarray:
    z, y, x = np.argwhere(volume.hu == 1000)[0]
    return nib.affines.apply_affine(volume.affine, [x, y, z])


@pytest.mark.parametrize("kind", ["singular", "nan"])
def test_an_unusable_sform_beside_a_usable_qform_is_read_by_the_qform(kind, tmp_path, caplog):
    path = _write(tmp_path / f"{kind}.nii", kind)
    header = nib.load(path).header
    assert header.get_qform(coded=True)[1] == 1 and int(header["sform_code"]) == 2  # the case: both coded
    with caplog.at_level(logging.WARNING):
        volume = read_nifti(path)
    expected = nib.affines.apply_affine(header.get_qform(), BRIGHT)  # nibabel's qform, the oracle
    np.testing.assert_allclose(_world_of_bright(volume), expected, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8), atol=1e-5)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith(f"image {path}: header field sform (sform_code 2) ")
    assert warning.endswith("its voxels are placed by the qform (qform_code 1) instead")


def test_labels_of_such_a_file_are_written_placed_as_it_was_read(tmp_path):
    """The output keeps the input's qform and says its sform is not to be used (sform_code 0):
    with the input's bad sform and code copied, every reader would misplace or refuse it."""
    path = _write(tmp_path / "singular.nii", "singular")
    volume = read_nifti(path)
    labels = (volume.hu == 1000).astype(np.uint8)
    out = write_nifti(labels, volume, tmp_path / "labels.nii.gz")
    written = nib.load(out)
    assert int(written.header["sform_code"]) == 0 and written.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(written.affine, nib.load(path).header.get_qform(), atol=1e-5)
    assert np.argwhere(np.asarray(written.dataobj) == 1).tolist() == [list(BRIGHT)]


def test_the_warning_is_one_line_of_a_command(tmp_path):
    path = _write(tmp_path / "singular.nii", "singular")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line] == [
        f"edgeseg: warning: image {path}: header field sform (sform_code 2) is singular (voxel axes "
        f"{np.round(_sform('singular')[:3, :3].T, 4).tolist()} span no volume); its voxels are placed by the qform "
        "(qform_code 1) instead"]


def test_a_singular_sform_without_a_qform_is_refused_naming_the_fields(tmp_path):
    path = _write(tmp_path / "no_qform.nii", "singular", qform_code=0)
    with pytest.raises(DataError) as refused:
        read_nifti(path)
    message = str(refused.value)
    assert message.startswith(f"image {path}: header field sform (sform_code 2) is singular (voxel axes ")
    assert ", and qform_code is 0, so the file does not say how its voxels lie in the patient" in message


def test_both_unusable_is_refused_naming_both_fields(tmp_path):
    path = _write(tmp_path / "both.nii", "singular", qform_x=np.nan)
    with pytest.raises(DataError) as refused:
        read_nifti(path)
    message = str(refused.value)
    assert message.startswith(f"image {path}: header fields sform (sform_code 2) is singular (voxel axes "), message
    assert message.endswith("span no volume) and qform (qform_code 1) is not finite, so the file does not say how "
                            "its voxels lie in the patient; set a usable sform or qform"), message


def test_a_usable_sform_is_still_preferred_to_the_qform(tmp_path, caplog):
    """nibabel's and the standard's order: where both are usable, the sform places the voxels."""
    path = _write(tmp_path / "shifted.nii", "usable")
    shifted = QFORM.copy()
    shifted[:3, 3] += (4.0, -2.0, 7.5)
    _patch(path, shifted)
    assert not np.allclose(nib.load(path).header.get_sform(), nib.load(path).header.get_qform())
    with caplog.at_level(logging.WARNING):
        volume = read_nifti(path)
    np.testing.assert_allclose(_world_of_bright(volume), nib.affines.apply_affine(nib.load(path).affine, BRIGHT),
                               atol=1e-4)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
