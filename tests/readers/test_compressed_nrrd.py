"""Compressed NRRD label data read to the end of its stream however the file lays it out: gzip
in a detached data file, gzip after a line skip or with a byte skip, and bzip2. A cut or
corrupted stream is one error naming the file, never labels read from part of it."""

from __future__ import annotations

import bz2
import gzip
import zlib

import nibabel as nib
import numpy as np
import pytest

from edgeseg.data import read_nifti
from edgeseg.data.labels import read_label_file
from edgeseg.errors import DataError

pytest.importorskip("nrrd")

SHAPE = (24, 20, 6)  # x, y, z as the NRRD lists its axes


def _ct_and_label(tmp_path):
    """A CT on a known grid and a label map on it (both indexed x, y, z) with no two slices alike."""
    hu = np.full(SHAPE, -1000, np.int16)
    hu[4:20, 3:17] = 40
    image = nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.0, 1.0]))
    image.set_qform(image.affine, 1)
    image.set_sform(image.affine, 1)
    (tmp_path / "ct.nii").write_bytes(image.to_bytes())
    label = np.zeros(SHAPE, np.uint8)
    for z in range(SHAPE[2]):
        label[4:20 - z, 3:17, z] = 1 + z % 2
    return read_nifti(tmp_path / "ct.nii"), label


def _header(encoding: str, *fields: str) -> bytes:
    # NIfTI's RAS grid diag(0.8, 0.8, 2) is diag(-0.8, -0.8, 2) in LPS
    lines = ["NRRD0004", "type: uint8", "dimension: 3", f"sizes: {' '.join(map(str, SHAPE))}",
             "space: left-posterior-superior", "space directions: (-0.8,0,0) (0,-0.8,0) (0,0,2)",
             "kinds: domain domain domain", "space origin: (0,0,0)", f"encoding: {encoding}", *fields]
    return ("\n".join(lines) + "\n\n").encode()


def _oracle(volume, label) -> np.ndarray:
    """The label map on the volume's (z, y, x) LPS grid, as read_label_file returns it."""
    return label.transpose(2, 1, 0)[:, ::-1, ::-1]


def _cut(stream: bytes) -> bytes:
    """The stream without its last 8 bytes: for gzip its CRC-32 and length, for bzip2 its end
    marker and CRC; every data byte is still there, so a reader that stops at the last voxel
    takes it."""
    return stream[:-8]


def _flipped(data: bytes) -> bytes:
    """``data`` gzip-compressed with one byte changed in its middle, the trailer still holding
    the CRC-32 of ``data``: at level 0 (stored blocks), so the change decodes to that byte."""
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0x55
    packed = bytearray(gzip.compress(bytes(changed), compresslevel=0, mtime=0))
    packed[-8:-4] = zlib.crc32(data).to_bytes(4, "little")
    return bytes(packed)


def test_a_detached_gzip_data_file_cut_or_changed_is_refused(tmp_path):
    volume, label = _ct_and_label(tmp_path)
    data = label.tobytes(order="F")
    (tmp_path / "label.nhdr").write_bytes(_header("gzip", "data file: label.raw.gz"))
    (tmp_path / "label.raw.gz").write_bytes(gzip.compress(data, mtime=0))
    np.testing.assert_array_equal(read_label_file(tmp_path / "label.nhdr", volume), _oracle(volume, label))
    (tmp_path / "label.raw.gz").write_bytes(_cut(gzip.compress(data, mtime=0)))
    with pytest.raises(DataError, match=r"data file .*label\.raw\.gz of label .*label\.nhdr: its gzip data is truncated"):
        read_label_file(tmp_path / "label.nhdr", volume)
    (tmp_path / "label.raw.gz").write_bytes(_flipped(data))
    with pytest.raises(DataError, match=r"label\.raw\.gz of label .*: its gzip data is corrupt"):
        read_label_file(tmp_path / "label.nhdr", volume)


def test_gzip_data_after_a_line_skip_is_read_to_its_end(tmp_path):
    volume, label = _ct_and_label(tmp_path)
    packed = gzip.compress(label.tobytes(order="F"), mtime=0)
    head = _header("gzip", "line skip: 1") + b"a line of another tool's header\n"
    (tmp_path / "label.nrrd").write_bytes(head + packed)
    np.testing.assert_array_equal(read_label_file(tmp_path / "label.nrrd", volume), _oracle(volume, label))
    (tmp_path / "cut.nrrd").write_bytes(head + _cut(packed))
    with pytest.raises(DataError, match=r"cut\.nrrd: its gzip data is truncated"):
        read_label_file(tmp_path / "cut.nrrd", volume)


def test_a_byte_skip_of_gzip_data_counts_decompressed_bytes(tmp_path):
    """As Teem (and so ITK and 3D Slicer) reads it: the skipped bytes are inside the stream."""
    volume, label = _ct_and_label(tmp_path)
    packed = gzip.compress(b"SKIP" + label.tobytes(order="F"), mtime=0)
    (tmp_path / "label.nrrd").write_bytes(_header("gzip", "byte skip: 4") + packed)
    np.testing.assert_array_equal(read_label_file(tmp_path / "label.nrrd", volume), _oracle(volume, label))
    (tmp_path / "cut.nrrd").write_bytes(_header("gzip", "byte skip: 4") + _cut(packed))
    with pytest.raises(DataError, match=r"cut\.nrrd: its gzip data is truncated"):
        read_label_file(tmp_path / "cut.nrrd", volume)


def test_bzip2_data_cut_or_followed_by_bytes_is_refused(tmp_path):
    volume, label = _ct_and_label(tmp_path)
    packed = bz2.compress(label.tobytes(order="F"))
    (tmp_path / "label.nrrd").write_bytes(_header("bzip2") + packed)
    np.testing.assert_array_equal(read_label_file(tmp_path / "label.nrrd", volume), _oracle(volume, label))
    (tmp_path / "cut.nrrd").write_bytes(_header("bzip2") + _cut(packed))
    with pytest.raises(DataError, match=r"cut\.nrrd: its bzip2 data is truncated"):
        read_label_file(tmp_path / "cut.nrrd", volume)
    (tmp_path / "longer.nrrd").write_bytes(_header("bzip2") + packed + bz2.compress(b"\x01" * 64))
    with pytest.raises(DataError, match=r"longer\.nrrd: bytes follow the end of its bzip2 data"):
        read_label_file(tmp_path / "longer.nrrd", volume)
    broken = bytearray(packed)
    broken[len(packed) // 2] ^= 0x55
    (tmp_path / "broken.nrrd").write_bytes(_header("bzip2") + bytes(broken))
    with pytest.raises(DataError, match=r"broken\.nrrd: its bzip2 data is corrupt"):
        read_label_file(tmp_path / "broken.nrrd", volume)


def test_data_info_on_a_cut_bzip2_label_is_one_line(tmp_path, assert_one_line_error):
    import shutil
    import subprocess
    import sys

    _, label = _ct_and_label(tmp_path)
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    shutil.copy(tmp_path / "ct.nii", data / "imagesTr" / "case_0.nii")
    (data / "labelsTr" / "case_0.nrrd").write_bytes(_header("bzip2") + _cut(bz2.compress(label.tobytes(order="F"))))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(data), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "case_0.nrrd: its bzip2 data is truncated")
