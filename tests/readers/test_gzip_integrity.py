"""gzip-compressed inputs are read to the end of their stream: data that fails its CRC-32, or a
file cut short of its trailer, is refused with one error naming the file, never read as voxels."""

from __future__ import annotations

import gzip
import subprocess
import sys
import zlib

import nibabel as nib
import numpy as np
import pytest

from edgeseg.data import read_nifti
from edgeseg.data.labels import read_label_file
from edgeseg.errors import DataError

nrrd = pytest.importorskip("nrrd")


def _nifti_bytes(data: np.ndarray) -> bytes:
    image = nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0]))
    image.set_qform(image.affine, 1)
    image.set_sform(image.affine, 1)
    return image.to_bytes()


def _ct() -> np.ndarray:
    hu = np.full((24, 20, 6), -1000, np.int16)
    hu[4:20, 3:17] = np.arange(16 * 14 * 6, dtype=np.int16).reshape(16, 14, 6)  # no two voxels alike
    return hu


def _changed_after_writing(stored: bytes, offset: int) -> bytes:
    """``stored`` gzip-compressed, one byte at ``offset`` changed, the trailer still holding the
    CRC-32 of ``stored``: a file whose data changed after it was written. Compressed at level 0
    (stored deflate blocks), so the change decodes to that one byte on any zlib, not to an error."""
    changed = bytearray(stored)
    changed[offset] ^= 0x55
    packed = bytearray(gzip.compress(bytes(changed), compresslevel=0, mtime=0))
    packed[-8:-4] = zlib.crc32(stored).to_bytes(4, "little")
    return bytes(packed)


def test_a_nii_gz_whose_voxels_fail_the_crc_is_refused_as_corrupt(tmp_path):
    stored = _nifti_bytes(_ct())
    bad = tmp_path / "ct.nii.gz"
    bad.write_bytes(_changed_after_writing(stored, len(stored) - 700))  # a voxel byte
    # nibabel alone reads it: it stops at the last voxel, short of the trailer
    assert (np.asanyarray(nib.load(bad).dataobj) != _ct()).sum() == 1
    with pytest.raises(DataError, match=r"cannot read image .*ct\.nii\.gz: its gzip data is corrupt \(CRC check"):
        read_nifti(bad)


def test_a_nii_gz_cut_before_its_trailer_is_refused_as_truncated(tmp_path):
    whole = gzip.compress(_nifti_bytes(_ct()), mtime=0)
    cut = tmp_path / "ct.nii.gz"
    cut.write_bytes(whole[:-8])  # every voxel there, the CRC-32 and length gone
    with pytest.raises(DataError, match=r"ct\.nii\.gz: its gzip data is truncated"):
        read_nifti(cut)
    sound = tmp_path / "sound.nii.gz"
    sound.write_bytes(whole)
    np.testing.assert_array_equal(read_nifti(sound).hu[:, ::-1, ::-1].transpose(2, 1, 0), _ct())


def test_a_label_nii_gz_that_fails_its_crc_is_refused(tmp_path):
    (tmp_path / "ct.nii").write_bytes(_nifti_bytes(_ct()))
    label = (_ct() > 0).astype(np.uint8)
    stored = _nifti_bytes(label)
    (tmp_path / "label.nii.gz").write_bytes(_changed_after_writing(stored, len(stored) - 100))
    with pytest.raises(DataError, match=r"label .*label\.nii\.gz: its gzip data is corrupt"):
        read_nifti(tmp_path / "ct.nii", tmp_path / "label.nii.gz")


def test_data_info_on_a_corrupt_nii_gz_is_one_line(tmp_path, assert_one_line_error):
    stored = _nifti_bytes(_ct())
    bad = tmp_path / "scan.nii.gz"
    bad.write_bytes(_changed_after_writing(stored, len(stored) - 700))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(bad), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "scan.nii.gz: its gzip data is corrupt")


def _seg_nrrd(tmp_path):
    """A CT read from NIfTI and the gzip bytes (header, data) of a label NRRD on its grid."""
    ct = tmp_path / "ct.nii"
    ct.write_bytes(_nifti_bytes(_ct()))
    volume = read_nifti(ct)
    label = (_ct() > 0).astype(np.uint8) * 2
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "gzip",
              "space directions": np.diag([-0.8, -0.8, 2.0]), "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "whole.nrrd"), label, header, index_order="F")
    raw = (tmp_path / "whole.nrrd").read_bytes()
    split = raw.index(b"\n\n") + 2
    return volume, label, raw[:split], raw[split:]


def test_a_label_nrrd_cut_before_its_gzip_trailer_is_refused(tmp_path):
    volume, label, head, data = _seg_nrrd(tmp_path)
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(head + data[:-8])  # pynrrd alone reads it: every label byte is there
    assert np.array_equal(nrrd.read(str(cut), index_order="F")[0], label)
    with pytest.raises(DataError, match=r"cut\.nrrd: its gzip data is truncated"):
        read_label_file(cut, volume)
    stored = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(head + _changed_after_writing(stored, len(stored) // 2))
    with pytest.raises(DataError, match=r"bad\.nrrd: its gzip data is corrupt"):
        read_label_file(bad, volume)
    whole = tmp_path / "whole.nrrd"
    np.testing.assert_array_equal(read_label_file(whole, volume), (volume.hu > 0).astype(np.uint8) * 2)


def test_a_label_nrrd_with_bytes_after_its_gzip_stream_is_refused(tmp_path):
    volume, _, head, data = _seg_nrrd(tmp_path)
    (tmp_path / "longer.nrrd").write_bytes(head + data + gzip.compress(b"\x01" * 64))
    with pytest.raises(DataError, match=r"longer\.nrrd: bytes follow the end of its gzip data"):
        read_label_file(tmp_path / "longer.nrrd", volume)


def test_a_big_endian_int16_label_nrrd_reads_as_pynrrd_reads_it(tmp_path):
    volume, label, _, _ = _seg_nrrd(tmp_path)
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "gzip", "endian": "big",
              "space directions": np.diag([-0.8, -0.8, 2.0]), "space origin": np.zeros(3)}
    nrrd.write(str(tmp_path / "wide.nrrd"), label.astype(">i2"), header, index_order="F")
    assert b"type: int16" in (tmp_path / "wide.nrrd").read_bytes()[:400]
    np.testing.assert_array_equal(read_label_file(tmp_path / "wide.nrrd", volume), (volume.hu > 0).astype(np.uint8) * 2)


def test_an_image_with_an_nrrd_label_is_read_once(tmp_path, monkeypatch):
    """Its voxels were read a second time before the label was attached (a 600-slice .nii.gz
    costs seconds to inflate)."""
    import edgeseg.data.nifti as nifti

    _, _, head, data = _seg_nrrd(tmp_path)
    (tmp_path / "ct.seg.nrrd").write_bytes(head + data)
    opened = []
    real_open = nifti._open
    monkeypatch.setattr(nifti, "_open", lambda path, what: opened.append(path.name) or real_open(path, what))
    volume = read_nifti(tmp_path / "ct.nii", tmp_path / "ct.seg.nrrd")
    assert opened == ["ct.nii"]
    np.testing.assert_array_equal(volume.label, (volume.hu > 0).astype(np.uint8) * 2)


def test_a_corrupt_nii_gz_upload_is_refused_naming_the_upload(tmp_path):
    from edgeseg.serve.uploads import read_upload

    stored = _nifti_bytes(_ct())
    body = tmp_path / "body"
    body.write_bytes(_changed_after_writing(stored, len(stored) - 700))
    with pytest.raises(DataError, match=r"^cannot read image upload\.nii\.gz: its gzip data is corrupt"):
        read_upload(body, "npy", tmp_path)
