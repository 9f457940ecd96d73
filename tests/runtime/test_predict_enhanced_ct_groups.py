"""``edgeseg predict --format dicom-seg`` of Enhanced CT files whose functional groups are laid out
as DICOM allows but as the SEG writer does not take them: Pixel Measures or Plane Orientation kept
per frame (with one value, or with values that differ), and Pixel Measures without SliceThickness.
The SEG is written, passes dciodvfy and reads back onto the file's volume as the labels the model
gives the single-frame series; or the run is refused in one line before the model is loaded."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sequence import Sequence

from edgeseg.cli.main import cli
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.data.open import open_dataset
from edgeseg.runtime import Segmenter
from tests.enhanced_ct import enhanced_ct, read_slices
from tests.guarded_cli import GuardedCliRunner

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
ORDER = [2, 0, 1]


def predict(*args, quiet: bool = True):
    """``--quiet`` prints warnings after a run that succeeds, and nothing but the error of one that fails."""
    return GuardedCliRunner().invoke(cli, ["predict", *map(str, args), "--backend", "onnxruntime:fp32",
                                           "--format", "dicom-seg", *(["--quiet"] if quiet else [])])


def per_frame(ds: pydicom.Dataset, group: str) -> None:
    """Move ``group`` from the shared functional groups into every frame's (the same item each)."""
    (item,) = ds.SharedFunctionalGroupsSequence[0][group].value
    del ds.SharedFunctionalGroupsSequence[0][group]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame[group] = pydicom.DataElement(group, "SQ", Sequence([copy.deepcopy(item)]))


def write(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def series_labels(bundle_dir) -> np.ndarray:
    volume, _ = read_dicom_series_with_refs(SERIES)
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as segmenter:
        return segmenter.predict_volume(volume)


def check_seg(seg_path: Path, enhanced: Path, labels: np.ndarray) -> pydicom.Dataset:
    (labelled,) = open_dataset(enhanced, label_file=seg_path)
    np.testing.assert_array_equal(labelled.label, labels)
    assert labels.any()  # the model found liver: the comparison covers labels
    if shutil.which("dciodvfy"):
        done = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True)
        assert [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")] == []
    return pydicom.dcmread(seg_path, stop_before_pixels=True)


@pytest.mark.parametrize("groups, nudge", [(("PixelMeasuresSequence",), 0), (("PlaneOrientationSequence",), 0),
                                           (("PixelMeasuresSequence", "PlaneOrientationSequence"), 0),
                                           (("PlaneOrientationSequence",), 5e-5)])
def test_groups_kept_per_frame_with_one_value_make_a_seg(bundle_dir, series_labels, tmp_path, groups, nudge):
    """``nudge``: frame 3's orientation off by as little as two writers' roundings differ, one value still."""
    ds = enhanced_ct(read_slices(SERIES), ORDER)
    for group in groups:
        per_frame(ds, group)
    if nudge:
        orientation = ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence[0]
        orientation.ImageOrientationPatient = [float(v) + nudge for v in orientation.ImageOrientationPatient]
    enhanced = write(ds, tmp_path / "e.dcm")
    result = predict(bundle_dir, enhanced, "--out", tmp_path / "pred.dcm")
    assert result.exit_code == 0, result.output
    assert "field of view" in result.output  # the model's warning for this series: the model ran
    seg = check_seg(tmp_path / "pred.dcm", enhanced, series_labels)
    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose([float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing],
                               [float(v) for v in pydicom.dcmread(SERIES / "01.dcm").PixelSpacing])
    # the source file is read as it was written: its groups stay per frame
    assert all(group in item for group in groups for item in pydicom.dcmread(enhanced).PerFrameFunctionalGroupsSequence)


def test_thickness_that_differs_between_frames_is_stated_frame_by_frame(bundle_dir, series_labels, tmp_path):
    """Frames of two thicknesses were refused before the model ran ("frames 1 and 3 have
    SliceThickness 1.25 and 7.5 (PixelMeasuresSequence); a DICOM SEG states one for all the frames
    it covers"): highdicom shares the first frame's Pixel Measures. Now each SEG frame has its own,
    with the thickness of the source frame it references (the oracle: the source file read with
    pydicom), none shared, and the SEG passes dciodvfy and reads back onto its slices.
    (Orientations or pixel spacings that differ the series reader refuses itself.)"""
    hd = pytest.importorskip("highdicom")
    ds = enhanced_ct(read_slices(SERIES), ORDER)
    per_frame(ds, "PixelMeasuresSequence")
    ds.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence[0].SliceThickness = "7.5"
    enhanced = write(ds, tmp_path / "e.dcm")
    result = predict(bundle_dir, enhanced, "--out", tmp_path / "pred.dcm")
    assert result.exit_code == 0, result.output
    seg = check_seg(tmp_path / "pred.dcm", enhanced, series_labels)
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    source = pydicom.dcmread(enhanced, stop_before_pixels=True)
    stated = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = frame.DerivationImageSequence[0].SourceImageSequence
        number = int(reference.ReferencedFrameNumber)
        source_frame = source.PerFrameFunctionalGroupsSequence[number - 1]
        assert frame.PlanePositionSequence[0].ImagePositionPatient == \
            source_frame.PlanePositionSequence[0].ImagePositionPatient
        (measures,) = frame.PixelMeasuresSequence
        assert float(measures.SliceThickness) == float(source_frame.PixelMeasuresSequence[0].SliceThickness)
        stated.append(float(measures.SliceThickness))
    assert sorted(stated) == [1.25, 1.25, 7.5]
    # highdicom reads each source frame's segmentation back as edgeseg's reader does
    read = hd.seg.segread(tmp_path / "pred.dcm")
    frames = read.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3], combine_segments=True,
                                            ignore_spatial_locations=True)
    (labelled,) = open_dataset(enhanced, label_file=tmp_path / "pred.dcm")
    _, refs = read_dicom_series_with_refs(enhanced)
    np.testing.assert_array_equal(frames, refs.to_frame_order(refs.to_source_layout(labelled.label)))


def test_pixel_measures_without_slice_thickness_get_the_frame_spacing(bundle_dir, series_labels, tmp_path):
    ds = enhanced_ct(read_slices(SERIES), ORDER)
    del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness
    enhanced = write(ds, tmp_path / "e.dcm")
    result = predict(bundle_dir, enhanced, "--out", tmp_path / "pred.dcm")
    assert result.exit_code == 0, result.output
    seg = check_seg(tmp_path / "pred.dcm", enhanced, series_labels)
    # the oracle: the gap between the slices' positions along their normal, from the slices themselves
    slices = read_slices(SERIES)
    cosines = np.asarray(slices[0].ImageOrientationPatient, dtype=float)
    heights = np.sort([np.dot(np.cross(cosines[:3], cosines[3:]), np.asarray(s.ImagePositionPatient, dtype=float))
                       for s in slices])
    thickness = float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    assert thickness == pytest.approx(float(np.median(np.diff(heights))), abs=1e-4)
    assert "frames have no SliceThickness; their DICOM SEG states the frame spacing" in result.output


def test_a_frame_without_slice_thickness_gets_that_of_the_others(bundle_dir, series_labels, tmp_path):
    """As a slice of a single-frame series without one (tests/runtime/test_seg_sources.py): the
    frames' stated thickness, 1.25 mm, not their 1 mm spacing, and the SEG is written."""
    ds = enhanced_ct(read_slices(SERIES), ORDER)
    per_frame(ds, "PixelMeasuresSequence")
    del ds.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence[0].SliceThickness
    enhanced = write(ds, tmp_path / "e.dcm")
    result = predict(bundle_dir, enhanced, "--out", tmp_path / "pred.dcm")
    assert result.exit_code == 0, result.output
    seg = check_seg(tmp_path / "pred.dcm", enhanced, series_labels)
    (original,) = {float(s.SliceThickness) for s in read_slices(SERIES)}
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == original
    assert "1 of its 3 frames have no SliceThickness; their DICOM SEG states that of the others" in result.output


def test_a_frame_without_slice_thickness_among_two_thicknesses_gets_the_frame_spacing(bundle_dir, series_labels,
                                                                                       tmp_path):
    """The other frames state no one thickness to take: the frame without one states the frames'
    spacing (1 mm, from the slices' positions), the others their own."""
    ds = enhanced_ct(read_slices(SERIES), ORDER)
    per_frame(ds, "PixelMeasuresSequence")
    del ds.PerFrameFunctionalGroupsSequence[1].PixelMeasuresSequence[0].SliceThickness
    ds.PerFrameFunctionalGroupsSequence[2].PixelMeasuresSequence[0].SliceThickness = "7.5"
    enhanced = write(ds, tmp_path / "e.dcm")
    result = predict(bundle_dir, enhanced, "--out", tmp_path / "pred.dcm")
    assert result.exit_code == 0, result.output
    assert "1 of its 3 frames have no SliceThickness; their DICOM SEG states the frame spacing, 1 mm" in result.output
    seg = check_seg(tmp_path / "pred.dcm", enhanced, series_labels)
    stated = {int(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber):
              float(frame.PixelMeasuresSequence[0].SliceThickness) for frame in seg.PerFrameFunctionalGroupsSequence}
    (original,) = {float(s.SliceThickness) for s in read_slices(SERIES)}
    assert stated == {1: original, 2: 1.0, 3: 7.5}
