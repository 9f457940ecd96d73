"""DICOM series reader on the real dcmqi CT slices, checked against pydicom and the NRRD mask."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nrrd
import numpy as np
import pydicom
import pytest

from edgeseg.data import read_dicom_series, read_dicom_series_with_refs
from edgeseg.errors import DataError


def _raw_stack(folder, names):
    """HU straight from pydicom, slices in the given file order: the oracle."""
    slices = []
    for name in names:
        ds = pydicom.dcmread(folder / name)
        slices.append(ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(slices)


def _copy_series(dcmqi, dst):
    shutil.copytree(dcmqi / "ct-3slice", dst)
    return dst


def test_slices_come_out_inferior_to_superior(dcmqi):
    volume = read_dicom_series(dcmqi / "ct-3slice")

    z = [float(pydicom.dcmread(dcmqi / "ct-3slice" / name).ImagePositionPatient[2])
         for name in volume.slice_ids]
    assert z == sorted(z) and len(set(z)) == 3
    assert volume.slice_ids == ["03.dcm", "02.dcm", "01.dcm"]  # file names run superior to inferior
    assert volume.hu.shape == (3, 512, 512) and volume.hu.dtype == np.float32
    np.testing.assert_allclose(volume.spacing, (1.0, 0.810547, 0.810547), rtol=1e-5)
    # Standard axial orientation is already LPS: pixels are the stored rows and columns.
    np.testing.assert_array_equal(volume.hu, _raw_stack(dcmqi / "ct-3slice", volume.slice_ids))
    # The affine puts voxel (0, 0, 0) at ImagePositionPatient of the lowest slice, in RAS.
    lowest = np.asarray(pydicom.dcmread(dcmqi / "ct-3slice" / "03.dcm").ImagePositionPatient, float)
    np.testing.assert_allclose(volume.affine @ [0, 0, 0, 1], [-lowest[0], -lowest[1], lowest[2], 1], atol=1e-4)
    np.testing.assert_allclose(volume.affine @ [0, 0, 2, 1], [-lowest[0], -lowest[1], lowest[2] + 2, 1], atol=1e-4)


def test_liver_mask_from_nrrd_lands_on_liver_hu(dcmqi):
    volume = read_dicom_series(dcmqi / "ct-3slice")
    mask, header = nrrd.read(str(dcmqi / "liver_seg.nrrd"))

    # The NRRD's geometry, checked rather than assumed: LPS, origin at the lowest slice, axes
    # (column, row, slice) with the DICOM pixel spacing.
    lowest = pydicom.dcmread(dcmqi / "ct-3slice" / "03.dcm")
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space origin"], [float(v) for v in lowest.ImagePositionPatient], atol=1e-3)
    np.testing.assert_allclose(np.diag(header["space directions"]), [0.810547, 0.810547, 1.0], atol=1e-6)

    liver = mask.transpose(2, 1, 0) > 0  # (x, y, z) -> (z, y, x)
    mean_hu = float(volume.hu[liver].mean())
    assert 30 <= mean_hu <= 60
    # Independent oracle: pydicom slices in ImagePositionPatient order, no edgeseg involved.
    oracle = _raw_stack(dcmqi / "ct-3slice", ["03.dcm", "02.dcm", "01.dcm"])
    assert mean_hu == pytest.approx(float(oracle[liver].mean()), abs=1e-3)
    # The liver is on the patient's right, the image left.
    assert np.argwhere(liver)[:, 2].mean() < 256


def test_refs_list_sources_in_stack_order_and_map_back(dcmqi):
    volume, info = read_dicom_series_with_refs(dcmqi / "ct-3slice")
    assert [p.name for p in info.files] == ["03.dcm", "02.dcm", "01.dcm"]
    assert list(info.sop_instance_uids) == [str(pydicom.dcmread(p).SOPInstanceUID) for p in info.files]
    assert info.series_instance_uid == str(pydicom.dcmread(info.files[0]).SeriesInstanceUID)
    expected = _raw_stack(dcmqi / "ct-3slice", ["03.dcm", "02.dcm", "01.dcm"])
    np.testing.assert_array_equal(info.to_source_layout(volume.hu), expected)


def _rewrite(folder, change):
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)


def test_mirrored_columns_are_flipped_back_to_lps(tmp_path, dcmqi):
    reference = read_dicom_series(dcmqi / "ct-3slice")

    def mirror(ds):
        # The same anatomy stored right-to-left: columns reversed, row cosine pointing to -x,
        # and the first pixel now at the patient's left edge.
        pixels = ds.pixel_array[:, ::-1].copy()
        ds.PixelData = pixels.tobytes()
        position = [float(v) for v in ds.ImagePositionPatient]
        position[0] += (ds.Columns - 1) * float(ds.PixelSpacing[1])
        ds.ImagePositionPatient = position
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]

    _rewrite(_copy_series(dcmqi, tmp_path / "mirrored"), mirror)
    volume = read_dicom_series(tmp_path / "mirrored")

    np.testing.assert_array_equal(volume.hu, reference.hu)
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-3)


def test_swapped_rows_and_columns_are_transposed_back(tmp_path, dcmqi):
    reference = read_dicom_series(dcmqi / "ct-3slice")

    def transpose(ds):
        # Rows now run along x and columns along y; the normal points inferior, so the reader
        # must also reverse the slice order it sorted by.
        ds.PixelData = ds.pixel_array.T.copy().tobytes()
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]

    _rewrite(_copy_series(dcmqi, tmp_path / "transposed"), transpose)
    volume, info = read_dicom_series_with_refs(tmp_path / "transposed")

    np.testing.assert_array_equal(volume.hu, reference.hu)
    assert volume.slice_ids == ["03.dcm", "02.dcm", "01.dcm"]
    assert [p.name for p in info.files] == ["01.dcm", "02.dcm", "03.dcm"]  # ascending along the normal
    # Mapped back, the first stack slice is the first file's stored pixels (rescaled).
    stored = _raw_stack(info.files[0].parent, ["01.dcm"])[0]
    np.testing.assert_array_equal(info.to_source_layout(volume.hu)[0], stored)


def test_non_ct_series_is_refused(tmp_path, dcmqi):
    folder = _copy_series(dcmqi, tmp_path / "mr")
    _rewrite(folder, lambda ds: setattr(ds, "Modality", "MR"))
    with pytest.raises(DataError, match="is MR, not CT"):
        read_dicom_series(folder)


@pytest.mark.parametrize("keep", [0.5, 300 / 526474])  # cut in the pixels, or in the header
def test_truncated_slice_names_the_file(tmp_path, dcmqi, keep):
    folder = _copy_series(dcmqi, tmp_path / "cut")
    data = (folder / "02.dcm").read_bytes()
    (folder / "02.dcm").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=r"02\.dcm.*truncated"):
        read_dicom_series(folder)


def test_two_series_need_a_choice(tmp_path, dcmqi):
    folder = _copy_series(dcmqi, tmp_path / "two")
    ds = pydicom.dcmread(folder / "01.dcm")
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(folder / "01.dcm")
    (folder / "README.txt").write_text("not DICOM, skipped\n")

    with pytest.raises(DataError, match=r"2 series.*1\.2\.3\.4\.5"):
        read_dicom_series(folder)
    picked = read_dicom_series(folder, series_uid="1.2.3.4.5")
    assert picked.slice_ids == ["01.dcm"]
    original_uid = str(pydicom.dcmread(folder / "02.dcm").SeriesInstanceUID)
    assert read_dicom_series(folder, series_uid=original_uid).num_slices == 2


def test_a_series_in_two_frames_of_reference_is_refused_naming_a_file(tmp_path, dcmqi, assert_one_line_error):
    """Slices of one Series Instance UID whose positions are in two coordinate systems (two
    acquisitions sharing the UID) were stacked on one grid, and NIfTI output placed half of
    them in the other's space."""
    folder = _copy_series(dcmqi, tmp_path / "two-frames")
    ds = pydicom.dcmread(folder / "02.dcm")
    ds.FrameOfReferenceUID = "1.2.3.4.6"
    ds.save_as(folder / "02.dcm")
    with pytest.raises(DataError, match=r"02\.dcm has FrameOfReferenceUID 1\.2\.3\.4\.6 but 01\.dcm has"):
        read_dicom_series(folder)
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(folder), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "a series lies in one frame of reference")


@pytest.mark.parametrize("enhanced", [True, False], ids=["Enhanced CT", "CT Image with NumberOfFrames"])
def test_a_multi_frame_ct_without_frame_geometry_is_named_as_such(tmp_path, dcmqi, enhanced, assert_one_line_error):
    """Frames without per-frame functional groups have no positions: refused, naming why (an
    Enhanced CT with them reads: tests/readers/test_enhanced_ct_reader.py)."""
    folder = tmp_path / "mf"
    folder.mkdir()
    ds = pydicom.dcmread(dcmqi / "ct-3slice" / "01.dcm")
    frame = ds.pixel_array
    if enhanced:  # geometry and rescale move into the per-frame functional groups
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
        for field in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            del ds[field]
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([frame] * 3).tobytes()
    ds.save_as(folder / "ct.dcm")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(folder), "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, f"{folder / 'ct.dcm'} is an Enhanced CT image without PerFrameFunctionalGroupsSequence"
                          if enhanced else f"{folder / 'ct.dcm'} is a multi-frame image (3 frames) of SOP class "
                          f"1.2.840.10008.5.1.4.1.1.2, without per-frame geometry")


@pytest.mark.parametrize("orientation", [[1, 0, 0, 0, 0.5, 0], [1, 0, 0, 0.3, 0.954, 0]], ids=["short", "skewed"])
def test_orientation_cosines_that_are_not_unit_and_orthogonal_are_refused(tmp_path, dcmqi, orientation):
    folder = _copy_series(dcmqi, tmp_path / "bad")
    _rewrite(folder, lambda ds: setattr(ds, "ImageOrientationPatient", orientation))
    with pytest.raises(DataError, match=r"not unit-length orthogonal vectors"):
        read_dicom_series(folder)


def test_orientation_cosines_rounded_to_six_decimals_are_normalised(tmp_path, dcmqi):
    reference = read_dicom_series(dcmqi / "ct-3slice")
    folder = _copy_series(dcmqi, tmp_path / "rounded")
    t = np.radians(0.01)  # what a scanner writes for a table a hundredth of a degree off
    _rewrite(folder, lambda ds: setattr(ds, "ImageOrientationPatient",
                                        [f"{v:.6f}" for v in (1, 0, 0, 0, np.cos(t), np.sin(t))]))
    volume = read_dicom_series(folder)
    lengths = np.linalg.norm(volume.affine[:3, :2], axis=0)
    np.testing.assert_allclose(lengths, np.linalg.norm(reference.affine[:3, :2], axis=0), rtol=1e-12)
