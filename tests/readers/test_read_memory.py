"""What reading a volume holds at its peak: the stored voxels and the float32 HU, no more.

A CT volume of 512 x 512 x 600 is 300 MB as int16; every whole-volume copy a reader makes on
the way (a float64 scaled copy, a second float32 one for reorienting, the pixel bytes pydicom
keeps) is another 300 MB to 1.2 GB on a small box. The peaks are measured with tracemalloc,
which sees numpy's allocations.
"""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from edgeseg.data import read_nifti
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.data.dicom_ct_writer import write_ct_series
from edgeseg.data.volume import Volume, default_affine

SHAPE_XYZ = (256, 256, 128)
# Headers, per-slab temporaries and the reader's own objects: half the smallest volume copy here.
SLACK = 8 << 20


def _peak(read):
    tracemalloc.start()
    try:
        result = read()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _ct_xyz(dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 1400, size=SHAPE_XYZ, dtype=np.int32).astype(dtype)


@pytest.mark.parametrize("dtype, inter, affine", [
    (np.int16, 0.0, np.diag([0.7, 0.7, 1.0, 1.0])),                  # RAS: x and y flipped to LPS
    (np.uint16, -1024.0, np.diag([0.7, 0.7, 1.0, 1.0])),             # scaled: nibabel reads float64
    (np.int16, 0.0, np.array([[0, 0, 1.0, 0], [-0.7, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])),  # axes permuted
], ids=["int16", "uint16-scaled", "permuted"])
def test_nifti_read_holds_the_stored_voxels_and_the_hu_only(tmp_path, dtype, inter, affine):
    path = tmp_path / "ct.nii.gz"
    stored = _ct_xyz(dtype)
    image = nib.Nifti1Image(stored, affine)
    image.header.set_slope_inter(1.0, inter)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)

    volume, peak = _peak(lambda: read_nifti(path))

    # oracle: nibabel's own reorientation to RAS, then flipped to LPS and indexed (z, y, x)
    canonical = nib.as_closest_canonical(nib.load(path))
    expected = np.asarray(canonical.dataobj, dtype=np.float64)[::-1, ::-1, :].transpose(2, 1, 0)
    np.testing.assert_array_equal(volume.hu, expected.astype(np.float32))
    assert volume.hu.dtype == np.float32
    # before: nibabel's scaled read (float64 where scl_inter is set), a float32 copy of it and a
    # reoriented float32 copy were all held at once: 5x the int16 volume, 8.5x when scaled
    assert peak <= stored.nbytes + volume.hu.nbytes + SLACK, \
        f"peak {peak / 2**20:.1f} MB for {stored.nbytes / 2**20:.1f} MB stored"


def test_dicom_read_holds_the_hu_and_the_headers_only(tmp_path):
    slices, side = 64, 256
    rng = np.random.default_rng(1)
    hu = rng.integers(-1000, 400, size=(slices, side, side)).astype(np.float32)
    spacing = (1.0, 0.7, 0.7)
    (tmp_path / "series").mkdir()
    write_ct_series(Volume(hu=hu, spacing=spacing, affine=default_affine(spacing), case_id="big"), tmp_path / "series")

    (volume, refs), peak = _peak(lambda: read_dicom_series_with_refs(tmp_path / "series"))

    np.testing.assert_array_equal(volume.hu, hu)
    # before: each slice's pixel bytes and its decoded array stayed on the pydicom datasets until
    # the series was read, and a whole-volume mask checked finiteness: 2.2x the float32 HU
    assert peak <= volume.hu.nbytes + SLACK, f"peak {peak / 2**20:.1f} MB for {volume.hu.nbytes / 2**20:.1f} MB of HU"


def test_enhanced_ct_read_holds_the_hu_and_one_frame_only(tmp_path):
    """An Enhanced CT file is decoded frame by frame from the file: its pixel bytes (half the
    float32 HU as int16) are never held whole, as a series' slices are not."""
    from tests.enhanced_ct import read_slices, write_enhanced_ct

    slices, side = 128, 256
    hu = np.random.default_rng(2).integers(-1000, 400, size=(slices, side, side)).astype(np.float32)
    spacing = (1.0, 0.7, 0.7)
    (tmp_path / "series").mkdir()
    write_ct_series(Volume(hu=hu, spacing=spacing, affine=default_affine(spacing), case_id="big"), tmp_path / "series")
    order = list(np.random.default_rng(3).permutation(slices))
    path = write_enhanced_ct(read_slices(tmp_path / "series"), tmp_path / "e.dcm", order)

    (volume, refs), peak = _peak(lambda: read_dicom_series_with_refs(path))

    np.testing.assert_array_equal(volume.hu, hu)
    # before: the file's pixel bytes were loaded whole and kept until the last frame: 1.5x the HU
    assert peak <= volume.hu.nbytes + SLACK, f"peak {peak / 2**20:.1f} MB for {volume.hu.nbytes / 2**20:.1f} MB of HU"
