"""Enhanced CT (one multi-frame file) reads to the Volume of the single-frame series it was made
from: the series reader on the slices is the oracle, voxel by voxel, affine and spacing, whatever
order the frames are stored in and with per-frame rescale; a file whose functional groups are
missing, doubled or inconsistent, or that holds several volumes, is refused in one line."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.data import open_dataset
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.errors import DataError
from tests.enhanced_ct import enhanced_ct, read_slices, rescale_slices, write_enhanced_ct

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _write_series(slices, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, ds in enumerate(slices):
        ds.save_as(folder / f"{k + 1:02d}.dcm")
    return folder


def _same_volume(multi, single) -> None:
    np.testing.assert_array_equal(multi.hu, single.hu)
    np.testing.assert_array_equal(multi.affine, single.affine)
    assert multi.spacing == single.spacing
    assert multi.uneven_gaps == single.uneven_gaps and multi.off_line == single.off_line


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_file_and_folder_read_as_the_single_frame_series(tmp_path, order):
    slices = read_slices(SERIES)
    single, single_refs = read_dicom_series_with_refs(SERIES)
    path = write_enhanced_ct(slices, tmp_path / "ect" / "e.dcm", order)
    for source in (path, path.parent):
        volume, refs = read_dicom_series_with_refs(source)
        _same_volume(volume, single)
        assert refs.files == (path,) and refs.sop_instance_uids == (pydicom.dcmread(path).SOPInstanceUID,)
        # stack slice k is the frame holding the single-frame series' slice k
        sources = [single_refs.files.index(SERIES / f"{order[n - 1] + 1:02d}.dcm") for n in refs.frame_numbers]
        assert sources == [0, 1, 2]
    assert volume.case_id == "ect" and read_dicom_series_with_refs(path)[0].case_id == "e"


def test_per_frame_rescale_is_applied_frame_by_frame(tmp_path):
    original = read_dicom_series_with_refs(SERIES)[0]
    slices = rescale_slices(read_slices(SERIES), [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0)])
    single = read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))[0]
    volume = read_dicom_series_with_refs(write_enhanced_ct(slices, tmp_path / "e.dcm", [2, 1, 0]))[0]
    _same_volume(volume, single)
    measured = original.hu > -2000  # outside the padding, the HU are the original series'
    np.testing.assert_array_equal(volume.hu[measured], original.hu[measured])


def test_uneven_frames_are_told_as_slices_are(tmp_path):
    slices = read_slices(SERIES)
    slices[2].ImagePositionPatient = [-235.199997, -226.800003, -129.690002]  # 02 -> 03 gap 1 mm -> 2 mm
    single = read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))[0]
    volume = read_dicom_series_with_refs(write_enhanced_ct(slices, tmp_path / "e.dcm", [1, 0, 2]))[0]
    assert single.uneven_gaps == pytest.approx((1.0, 2.0))
    _same_volume(volume, single)


def test_a_frame_off_the_line_is_told_as_a_slice_is(tmp_path):
    slices = read_slices(SERIES)
    slices[1].ImagePositionPatient = [-234.199997, -226.800003, -127.690002]  # 02.dcm 1 mm to the left
    single = read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))[0]
    volume = read_dicom_series_with_refs(write_enhanced_ct(slices, tmp_path / "e.dcm", [1, 2, 0]))[0]
    assert single.off_line == (pytest.approx(1.0), "02.dcm")
    assert volume.off_line == (pytest.approx(1.0), "e.dcm, frame 1")  # frame 1 holds 02.dcm
    np.testing.assert_array_equal(volume.hu, single.hu)
    np.testing.assert_array_equal(volume.affine, single.affine)


def test_a_gantry_tilted_enhanced_ct_keeps_its_sheared_affine(tmp_path):
    """Frames tilted 20 degrees about left-right, positions stepping along the table: the same
    sheared affine and plane spacing as the series, whose reading tests/readers/test_gantry_tilt.py
    checks against the DICOM definition."""
    tilt = np.radians(20)
    slices = read_slices(SERIES)
    for ds in slices:
        ds.ImageOrientationPatient = [1, 0, 0, 0, f"{np.cos(tilt):.10f}", f"{np.sin(tilt):.10f}"]
    single = read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))[0]
    volume = read_dicom_series_with_refs(write_enhanced_ct(slices, tmp_path / "e.dcm", [0, 2, 1]))[0]
    _same_volume(volume, single)
    assert volume.spacing[0] == pytest.approx(np.cos(tilt), abs=1e-6)  # 1 mm table step, planes cos(20) apart
    assert abs(volume.affine[:3, 1] @ volume.affine[:3, 2]) > 0.1  # sheared: the slice step is not along the normal


def test_series_folders_of_enhanced_ct_files_and_slices_open_as_cases(tmp_path):
    write_enhanced_ct(read_slices(SERIES), tmp_path / "data" / "a" / "e.dcm", [2, 1, 0])
    _write_series(read_slices(SERIES), tmp_path / "data" / "b")
    a, b = open_dataset(tmp_path / "data")
    assert (a.case_id, b.case_id) == ("a", "b")
    _same_volume(a, b)


def test_twelve_bit_frames_ignore_the_bits_above_bits_stored(tmp_path):
    """BitsStored 12, signed, with the upper four bits of every pixel set: the HU come from the
    low 12 bits, sign-extended from bit 11, frame by frame as slice by slice."""
    slices, expected = read_slices(SERIES), []
    for ds in slices:
        stored = np.clip(ds.pixel_array, -2048, 2047).astype(np.int32)
        expected.append(stored * 1.0 - 1024.0)
        ds.PixelData = ((stored & 0x0FFF) | 0x5000).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11
    single, refs = read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))
    volume = read_dicom_series_with_refs(write_enhanced_ct(slices, tmp_path / "e.dcm", [1, 2, 0]))[0]
    _same_volume(volume, single)
    hu = refs.to_source_layout(volume.hu)  # stack order: 03, 02, 01
    for k, path in enumerate(refs.files):
        np.testing.assert_array_equal(hu[k], expected[int(path.stem) - 1])


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80"], ids=["RLE", "JPEG-LS"])
def test_compressed_frames_decode_one_by_one(tmp_path, syntax):
    ds = enhanced_ct(read_slices(SERIES), [2, 0, 1])
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as exc:  # no encoder installed for the syntax
        pytest.skip(f"cannot compress to {syntax} here: {exc}")
    ds.save_as(tmp_path / "e.dcm", enforce_file_format=True)
    _same_volume(read_dicom_series_with_refs(tmp_path / "e.dcm")[0], read_dicom_series_with_refs(SERIES)[0])


def test_legacy_converted_enhanced_ct_from_highdicom(tmp_path):
    """A second writer: highdicom's legacy conversion of the same slices reads alike too."""
    hd = pytest.importorskip("highdicom")
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(read_slices(SERIES), hd.UID(), 5, hd.UID(), 1)
    legacy.save_as(tmp_path / "legacy.dcm")
    _same_volume(read_dicom_series_with_refs(tmp_path / "legacy.dcm")[0], read_dicom_series_with_refs(SERIES)[0])


def _broken(tmp_path: Path, change, order=(0, 1, 2)) -> Path:
    ds = enhanced_ct(read_slices(SERIES), list(order))
    change(ds)
    out = tmp_path / "broken.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def _per_frame(ds, k: int, name: str):
    return ds.PerFrameFunctionalGroupsSequence[k][name][0]


def _both_places(ds):
    ds.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence = copy.deepcopy(
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence)


def _two_stacks(ds):
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].StackID = str(1 + k % 2)


def _temporal(ds):
    ds.DimensionIndexSequence.append(pydicom.Dataset())
    ds.DimensionIndexSequence[1].DimensionIndexPointer = pydicom.tag.Tag("TemporalPositionIndex")
    ds.DimensionIndexSequence[1].FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].DimensionIndexValues = [k + 1, 1 + k % 2]


def _same_position(ds):
    _per_frame(ds, 2, "PlanePositionSequence").ImagePositionPatient = \
        _per_frame(ds, 0, "PlanePositionSequence").ImagePositionPatient


def _uneven_orientation(ds):
    shared = ds.SharedFunctionalGroupsSequence[0]
    item = shared.PlaneOrientationSequence
    del shared.PlaneOrientationSequence
    for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        frame.PlaneOrientationSequence = copy.deepcopy(item)
    _per_frame(ds, 1, "PlaneOrientationSequence").ImageOrientationPatient = [1, 0, 0, 0, 0.5, 0]


def _rescale_type(ds):
    shared = ds.SharedFunctionalGroupsSequence[0]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame.PixelValueTransformationSequence = copy.deepcopy(shared.PixelValueTransformationSequence)
    del shared.PixelValueTransformationSequence
    _per_frame(ds, 2, "PixelValueTransformationSequence").RescaleType = "MGML"


@pytest.mark.parametrize("change, expected", [
    (lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[1], "PlanePositionSequence"),
     "e.dcm, frame 2 has no PlanePositionSequence in its per-frame or shared functional groups"),
    (lambda ds: delattr(ds.SharedFunctionalGroupsSequence[0], "PixelValueTransformationSequence"),
     "e.dcm, frame 1 has no PixelValueTransformationSequence in its per-frame or shared functional groups"),
    (_both_places, "frame 2 has PixelMeasuresSequence in both its per-frame and shared functional groups"),
    (lambda ds: delattr(_per_frame(ds, 2, "PlanePositionSequence"), "ImagePositionPatient"),
     "frame 3: PlanePositionSequence lacks ImagePositionPatient"),
    (lambda ds: setattr(_per_frame(ds, 1, "PlanePositionSequence"), "ImagePositionPatient", [0, 0]),
     "frame 2: field ImagePositionPatient has 2 values, expected 3"),
    (_uneven_orientation, "frame 2 has ImageOrientationPatient [1.0, 0.0, 0.0, 0.0, 0.5, 0.0], whose row and column cosines"),
    (_rescale_type, "frame 3: field RescaleType is 'MGML', so its rescaled values are not Hounsfield units"),
    (lambda ds: setattr(ds, "NumberOfFrames", 4), "field NumberOfFrames is 4 but PerFrameFunctionalGroupsSequence has 3"),
    (_same_position, "e.dcm, frame 1 and e.dcm, frame 3 lie at the same slice position"),
    (lambda ds: setattr(ds, "ConcatenationUID", "1.2.3"), "is one part of a concatenation (field ConcatenationUID"),
    (lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"),
     "is a multi-frame image (3 frames) of SOP class 1.2.840.10008.5.1.4.1.1.2, without per-frame geometry"),
])
def test_inconsistent_functional_groups_are_refused_in_one_line(tmp_path, change, expected):
    path = _broken(tmp_path, change)
    path = path.rename(path.with_name("e.dcm"))
    with pytest.raises(DataError) as info:
        read_dicom_series_with_refs(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("change", [_two_stacks, _temporal])
def test_frames_of_several_stacks_or_times_at_distinct_positions_are_one_volume(tmp_path, change):
    """StackID or TemporalPositionIndex tell volumes apart only where frames share a position; the
    three frames at three positions are one volume, read as the slices are. Before, the file was
    refused as holding 2 volumes (StackID 1, 2 frames; StackID 2, 1 frame)."""
    volume, refs = read_dicom_series_with_refs(_broken(tmp_path, change))
    slices = read_dicom_series_with_refs(SERIES)[0]
    assert refs.frame_numbers is not None and sorted(refs.frame_numbers) == [1, 2, 3]
    np.testing.assert_array_equal(volume.hu, slices.hu)
    np.testing.assert_allclose(volume.affine, slices.affine)


def test_frame_content_is_not_needed_to_read_one_volume(tmp_path):
    """FrameContentSequence says which stack or time a frame belongs to; empty or absent, the
    frames are one volume all the same (it was an IndexError traceback when empty)."""
    def drop(ds):
        for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            item.FrameContentSequence = pydicom.Sequence() if k else item.FrameContentSequence
        del ds.PerFrameFunctionalGroupsSequence[0].FrameContentSequence
    _same_volume(read_dicom_series_with_refs(_broken(tmp_path, drop))[0], read_dicom_series_with_refs(SERIES)[0])


def test_size_limit_is_applied_before_any_frame_is_decoded(tmp_path, monkeypatch):
    path = _broken(tmp_path, lambda ds: setattr(ds, "PixelData", b"\0\0"))  # pixels cut short
    with pytest.raises(DataError, match="truncated"):
        read_dicom_series_with_refs(path)
    monkeypatch.setenv("EDGESEG_MAX_VOLUME_BYTES", str(3 * 512 * 512 * 4 - 1))
    with pytest.raises(DataError, match=r"broken\.dcm: a volume of shape \[3, 512, 512\] takes 3145728 bytes"):
        read_dicom_series_with_refs(path)


def test_multi_frame_file_beside_slices_of_its_series_is_refused(tmp_path):
    slices = read_slices(SERIES)
    folder = _write_series(read_slices(SERIES), tmp_path / "mixed")
    ds = enhanced_ct(slices)
    ds.SeriesInstanceUID = slices[0].SeriesInstanceUID
    ds.save_as(folder / "e.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"e\.dcm is a multi-frame image, but 3 other file\(s\) of the series lie "
                                        r"beside it \(01\.dcm, 02\.dcm, 03\.dcm\)"):
        read_dicom_series_with_refs(folder)


def test_data_info_shows_the_enhanced_ct_as_its_series(tmp_path):
    path = write_enhanced_ct(read_slices(SERIES), tmp_path / "e.dcm", [2, 0, 1])
    (volume,) = open_dataset(path)
    _same_volume(volume, read_dicom_series_with_refs(SERIES)[0])

    def info(source):
        done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(source)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    row = info(path).splitlines()[2].split()
    assert row[0] == "e" and row[1:] == info(SERIES).splitlines()[2].split()[1:]  # shape, spacing, HU as the series'
    broken = _broken(tmp_path, lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[1], "PlanePositionSequence"))
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(broken)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "frame 2 has no PlanePositionSequence" in done.stderr


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_the_uneven_and_rescaled_inputs_are_conformant(tmp_path):
    slices = rescale_slices(read_slices(SERIES), [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0)])
    done = subprocess.run(["dciodvfy", str(write_enhanced_ct(slices, tmp_path / "e.dcm", [2, 1, 0]))],
                          capture_output=True, text=True)
    assert [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")] == []


def test_top_level_rescale_without_a_pixel_value_transformation_is_read_with_a_warning(tmp_path, caplog):
    """Some converters write RescaleSlope / RescaleIntercept at the top level of an Enhanced CT and no
    Pixel Value Transformation (not conformant); dcm2niix and dcm4che read those for every frame, and
    so does edgeseg, with one warning naming the values. An intercept of -1000 (not the 0 of no
    rescale) shows they were read: the HU equal those of the single-frame slices the file holds."""
    slices = rescale_slices(read_slices(SERIES), [(1.0, -1000.0)] * 3)
    ds = enhanced_ct(slices, [2, 0, 1])
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1000"
    ds.save_as(tmp_path / "e.dcm", enforce_file_format=True)
    with caplog.at_level("WARNING", logger="edgeseg"):
        volume = read_dicom_series_with_refs(tmp_path / "e.dcm")[0]
    _same_volume(volume, read_dicom_series_with_refs(_write_series(slices, tmp_path / "series"))[0])
    warned = [r.getMessage() for r in caplog.records if "PixelValueTransformationSequence" in r.getMessage()]
    assert warned == [f"{tmp_path / 'e.dcm'} has no PixelValueTransformationSequence in its functional groups but "
                      f"RescaleIntercept -1000, RescaleSlope 1 at the top level; those are used for every frame"]
