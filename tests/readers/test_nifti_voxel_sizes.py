"""NIfTI transforms whose voxel sizes are zero, negative or below 1e-6 mm, with the header bytes
written by hand.

nibabel replaces a stored ``pixdim`` of 0 by 1 (and a negative one by its absolute value) as it
loads a header, so a qform with a 0 mm step was read as a 1 mm one wherever the sform was passed
over; and an sform axis of 1e-30 mm beside a usable qform was refused by the voxel-size check
("header fields qform/sform: affine gives a voxel size below 1e-6 mm") instead of being passed
over for the qform as other unusable sforms are. The oracle is the bytes written and nibabel's
own qform of a header whose pixdim is sound.
"""

from __future__ import annotations

import gzip
import logging
import struct
import subprocess
import sys

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from edgeseg.data.nifti import read_nifti  # noqa: E402
from edgeseg.errors import DataError  # noqa: E402

QFORM = np.diag([0.8, 0.7, 2.5, 1.0])
QFORM[:3, 3] = (-30.0, 12.0, -50.0)
# byte offsets of NIfTI-1 header fields (float32 / int16)
PIXDIM_AT, SFORM_CODE_AT, SROW_AT = 76, 254, 280


def _write(path, *, pixdim_z: float = 2.5, sform: str = "usable", sform_code: int = 2, endian: str = "<"):
    """A 7x6x5 file, qform ``QFORM`` (code 1) but with ``pixdim_z`` stored as pixdim[3], and an sform
    that is ``QFORM`` ("usable"), singular (its slice axis 0) or with an x axis of 1e-30 mm ("tiny")."""
    image = nib.Nifti1Image(np.arange(210, dtype=np.int16).reshape(7, 6, 5), QFORM)
    image.header.set_qform(QFORM, code=1)
    image.header.set_sform(QFORM, code=sform_code)
    if endian == ">":
        image = nib.Nifti1Image(image.dataobj, QFORM, image.header.as_byteswapped(">"))
    plain = path.with_name(path.name.removesuffix(".gz"))
    nib.save(image, plain)
    data = bytearray(plain.read_bytes())
    struct.pack_into(f"{endian}f", data, PIXDIM_AT + 3 * 4, pixdim_z)
    srow = QFORM[:3].copy()
    if sform == "singular":
        srow[:, 2] = 0.0
    elif sform == "tiny":
        srow[0, 0] = 1e-30
    struct.pack_into(f"{endian}12f", data, SROW_AT, *srow.ravel())
    path.write_bytes(gzip.compress(bytes(data)) if path.name.endswith(".gz") else bytes(data))
    return path


@pytest.mark.parametrize("pixdim_z", [0.0, -2.5, 1e-30, 4e-7])
def test_a_qform_stored_with_an_unusable_step_is_not_read_as_nibabel_repairs_it(pixdim_z, tmp_path):
    path = _write(tmp_path / "step.nii", pixdim_z=pixdim_z, sform="singular")
    if pixdim_z <= 0:  # the case: nibabel's header says 1 or 2.5 mm where the file says 0 or -2.5
        assert nib.load(path).header["pixdim"][3] == (1.0 if pixdim_z == 0 else 2.5)
    with pytest.raises(DataError) as refused:
        read_nifti(path)
    message = str(refused.value)
    assert message.startswith(f"image {path}: header fields sform (sform_code 2) is singular (voxel axes "), message
    assert (f"span no volume) and qform (qform_code 1) stores pixdim[3] {np.float32(pixdim_z):g}, not a "
            "voxel size of at least 1e-6 mm, so the file does not say how its voxels lie in the patient") in message


@pytest.mark.parametrize(("suffix", "endian"), [(".nii", ">"), (".nii.gz", "<")])
def test_the_stored_step_is_read_from_either_byte_order_and_compressed(suffix, endian, tmp_path):
    path = _write(tmp_path / f"step{suffix}", pixdim_z=0.0, sform="singular", endian=endian)
    with pytest.raises(DataError, match=r"qform \(qform_code 1\) stores pixdim\[3\] 0, not a voxel size"):
        read_nifti(path)
    sound = read_nifti(_write(tmp_path / f"sound{suffix}", sform="singular", endian=endian))
    np.testing.assert_allclose(sound.spacing, (2.5, 0.7, 0.8), atol=1e-6)


def test_a_zero_step_qform_without_an_sform_is_refused_in_one_line(tmp_path, assert_one_line_error):
    path = _write(tmp_path / "alone.nii", pixdim_z=0.0, sform_code=0)
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert_one_line_error(done, "header field qform (qform_code 1) stores pixdim[3] 0, not a voxel size of "
                                "at least 1e-6 mm, and sform_code is 0")


def test_a_usable_sform_places_the_voxels_whatever_the_qform_step(tmp_path, caplog):
    path = _write(tmp_path / "sform.nii", pixdim_z=0.0)
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        volume = read_nifti(path)
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8), atol=1e-6)
    assert not [r for r in caplog.records if r.name.startswith("edgeseg")]  # nibabel's own note of its repair aside


def test_an_sform_axis_of_1e_30_mm_is_passed_over_for_the_qform(tmp_path, caplog):
    path = _write(tmp_path / "tiny.nii", sform="tiny")
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        volume = read_nifti(path)
    expected = nib.load(path).header.get_qform()  # nibabel's qform of a sound pixdim: the oracle
    np.testing.assert_allclose(volume.spacing, (2.5, 0.7, 0.8), atol=1e-6)
    z, y, x = np.argwhere(volume.hu == 209)[0]  # the last voxel stored, (6, 5, 4)
    np.testing.assert_allclose(nib.affines.apply_affine(volume.affine, [x, y, z]),
                               nib.affines.apply_affine(expected, [6, 5, 4]), atol=1e-5)
    assert [r.getMessage() for r in caplog.records] == [
        f"image {path}: header field sform (sform_code 2) gives a voxel size below 1e-6 mm (voxel axes of 1e-30, 0.7, "
        "2.5 mm); its voxels are placed by the qform (qform_code 1) instead"]


def test_a_tiny_sform_beside_a_zero_step_qform_is_one_line_naming_both(tmp_path):
    path = _write(tmp_path / "both.nii", pixdim_z=0.0, sform="tiny")
    with pytest.raises(DataError) as refused:
        read_nifti(path)
    assert str(refused.value) == (
        f"image {path}: header fields sform (sform_code 2) gives a voxel size below 1e-6 mm (voxel axes of 1e-30, 0.7, "
        "2.5 mm) and qform (qform_code 1) stores pixdim[3] 0, not a voxel size of at least 1e-6 mm, so the "
        "file does not say how its voxels lie in the patient; set a usable sform or qform")


def test_labels_of_a_tiny_sform_file_are_written_by_its_qform_alone(tmp_path):
    """Copied, the 1e-30 mm sform and its code would make every reader refuse or misplace them."""
    from edgeseg.runtime.writers import write_nifti

    path = _write(tmp_path / "tiny.nii", sform="tiny")
    volume = read_nifti(path)
    written = nib.load(write_nifti((volume.hu == 209).astype(np.uint8), volume, tmp_path / "labels.nii.gz"))
    assert int(written.header["sform_code"]) == 0 and written.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(written.affine, QFORM, atol=1e-5)
    assert np.argwhere(np.asarray(written.dataobj) == 1).tolist() == [[6, 5, 4]]
