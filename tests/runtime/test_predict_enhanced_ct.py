"""``edgeseg predict`` of an Enhanced CT file: NIfTI output equal to that of the single-frame
series it was made from (0 differing voxels, same affine), and a DICOM SEG that references the
multi-frame source by SOP Instance UID and frame number, holds each frame's prediction, passes
dciodvfy and reads back with highdicom and with edgeseg's own SEG reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.cli.main import cli
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.data.open import open_dataset
from edgeseg.errors import DataError
from edgeseg.runtime import Segmenter
from tests.enhanced_ct import read_slices, write_enhanced_ct
from tests.guarded_cli import GuardedCliRunner

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
ORDER = [2, 0, 1]  # frame 1 holds 03.dcm, the lowest slice; frame 2 01.dcm, frame 3 02.dcm


def predict(*args):
    result = GuardedCliRunner().invoke(cli, ["predict", *map(str, args), "--backend", "onnxruntime:fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory) -> Path:
    return write_enhanced_ct(read_slices(SERIES), tmp_path_factory.mktemp("ect") / "e.dcm", ORDER)


@pytest.fixture(scope="module")
def seg_file(bundle_dir, enhanced, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "pred.dcm"
    predict(bundle_dir, enhanced, "--out", out)
    return out


def test_nifti_from_the_file_equals_nifti_from_the_series(bundle_dir, enhanced, tmp_path):
    import nibabel as nib

    predict(bundle_dir, SERIES, "--out", tmp_path / "series.nii.gz")
    predict(bundle_dir, enhanced, "--out", tmp_path / "file.nii.gz")
    predict(bundle_dir, enhanced.parent, "--out", tmp_path / "folder.nii.gz")
    series = nib.load(str(tmp_path / "series.nii.gz"))
    for name in ("file", "folder"):
        written = nib.load(str(tmp_path / f"{name}.nii.gz"))
        assert int(np.count_nonzero(np.asarray(written.dataobj) != np.asarray(series.dataobj))) == 0
        np.testing.assert_array_equal(written.affine, series.affine)
    assert np.asarray(series.dataobj).any()  # the model found liver: the comparison covers labels


def test_seg_references_each_frame_of_the_source(seg_file, enhanced, bundle_dir):
    source = pydicom.dcmread(enhanced, stop_before_pixels=True)
    seg = pydicom.dcmread(seg_file)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    # The oracle: the model's labels on the single-frame series, slice by slice of that series.
    volume, refs = read_dicom_series_with_refs(SERIES)
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as segmenter:
        expected = refs.to_source_layout(segmenter.predict_volume(volume))
    by_file = {path.name: expected[k] for k, path in enumerate(refs.files)}
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    assert len(frames) == 3  # one segment (liver), one SEG frame per source frame
    seen = []
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        (image,) = item.DerivationImageSequence[0].SourceImageSequence
        assert image.ReferencedSOPInstanceUID == source.SOPInstanceUID
        number = int(image.ReferencedFrameNumber)
        seen.append(number)
        np.testing.assert_array_equal(frame.astype(bool), by_file[f"{ORDER[number - 1] + 1:02d}.dcm"] == 1)
        # the SEG frame lies where its source frame lies
        position = item.PlanePositionSequence[0].ImagePositionPatient
        source_position = source.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0]
        np.testing.assert_allclose([float(v) for v in position],
                                   [float(v) for v in source_position.ImagePositionPatient], atol=1e-3)
    assert sorted(seen) == [1, 2, 3]


def test_seg_reads_back_with_highdicom_and_as_the_label_map(seg_file, enhanced, bundle_dir):
    hd = pytest.importorskip("highdicom")
    seg = hd.seg.segread(seg_file)
    source = pydicom.dcmread(enhanced, stop_before_pixels=True)
    volume, refs = read_dicom_series_with_refs(SERIES)
    with Segmenter.load(bundle_dir, backend="onnxruntime:fp32") as segmenter:
        labels = segmenter.predict_volume(volume)
    frames = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [1, 2, 3], combine_segments=True)
    by_file = {path.name: slice_ for path, slice_ in zip(refs.files, refs.to_source_layout(labels))}
    for number in (1, 2, 3):
        np.testing.assert_array_equal(frames[number - 1], by_file[f"{ORDER[number - 1] + 1:02d}.dcm"])
    # edgeseg's own reader puts the SEG back on the Enhanced CT's volume, as the labels were
    (labelled,) = open_dataset(enhanced, label_file=seg_file)
    np.testing.assert_array_equal(labelled.label, labels)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_seg_of_the_enhanced_ct_passes_dciodvfy(seg_file):
    done = subprocess.run(["dciodvfy", str(seg_file)], capture_output=True, text=True)
    assert "Segmentation" in done.stdout + done.stderr
    assert [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")] == []


def test_seg_off_its_source_frame_is_refused(seg_file, enhanced, tmp_path):
    """The SEG reader compares each SEG frame with the Enhanced CT frame it references, as it does
    with single-frame slices: a frame moved 5 mm is not on the file's grid."""
    seg = pydicom.dcmread(seg_file)
    item = seg.PerFrameFunctionalGroupsSequence[1]
    number = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
    position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
    item.PlanePositionSequence[0].ImagePositionPatient = [position[0] + 5, position[1], position[2]]
    seg.save_as(tmp_path / "moved.dcm")
    with pytest.raises(DataError, match=rf"frame 2 has ImagePositionPatient .* but its source .*e\.dcm, frame {number} "
                                        r"has .*; the SEG is not on this series' grid"):
        open_dataset(enhanced, label_file=tmp_path / "moved.dcm")


def test_two_segment_seg_of_a_shuffled_enhanced_ct_matches_the_series_seg(chest_bundle_run, tmp_path):
    """Two classes (ground-glass, consolidation) on a chest phantom whose 16 slices are stored as
    frames in shuffled order: for every segment and source frame, the Enhanced CT's SEG holds what
    the series' SEG holds for the slice that frame came from."""
    hd = pytest.importorskip("highdicom")
    from edgeseg.data import write_phantom_dataset
    from edgeseg.data.phantom import phantom_geometry

    write_phantom_dataset(tmp_path / "phantom", 1, seed=11, shape=phantom_geometry(96, 16)[0],
                          spacing=phantom_geometry(96, 16)[1], kind="chest", image_format="dicom")
    series = tmp_path / "phantom" / "case_000"
    slices = read_slices(series)
    order = [int(k) for k in np.random.default_rng(5).permutation(len(slices))]
    enhanced = write_enhanced_ct(slices, tmp_path / "e.dcm", order)
    bundle = chest_bundle_run / "bundle"
    predict(bundle, series, "--out", tmp_path / "series.seg.dcm", "--format", "dicom-seg")
    predict(bundle, enhanced, "--out", tmp_path / "e.seg.dcm", "--format", "dicom-seg")
    by_series, by_file = hd.seg.segread(tmp_path / "series.seg.dcm"), hd.seg.segread(tmp_path / "e.seg.dcm")
    assert by_file.number_of_segments == by_series.number_of_segments == 2
    frames = by_file.get_pixels_by_source_frame(pydicom.dcmread(enhanced).SOPInstanceUID,
                                                list(range(1, len(slices) + 1)), combine_segments=True)
    expected = by_series.get_pixels_by_source_instance([slices[k].SOPInstanceUID for k in order],
                                                       combine_segments=True)
    np.testing.assert_array_equal(frames, expected)
    assert set(np.unique(expected).tolist()) == {0, 1, 2}  # both classes were found: the test compares them


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_seg_frame_without_its_source_frame_number_is_refused(seg_file, enhanced, tmp_path, how):
    """A SEG frame that names the Enhanced CT but not which of its frames cannot be placed: it is
    refused by name, not read as a label map of zeros."""
    seg = pydicom.dcmread(seg_file)
    for item in seg.PerFrameFunctionalGroupsSequence:
        (image,) = item.DerivationImageSequence[0].SourceImageSequence
        if how == "deleted":
            del image.ReferencedFrameNumber
        else:
            image.ReferencedFrameNumber = None
    seg.save_as(tmp_path / "unnumbered.dcm")
    with pytest.raises(DataError, match=r"^SEG .*unnumbered\.dcm frame 1 references e\.dcm without "
                                        r"ReferencedFrameNumber"):
        open_dataset(enhanced, label_file=tmp_path / "unnumbered.dcm")


def test_seg_of_none_of_the_frames_is_refused(seg_file, enhanced, tmp_path):
    seg = pydicom.dcmread(seg_file)
    for item in seg.PerFrameFunctionalGroupsSequence:
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = 40
    seg.save_as(tmp_path / "elsewhere.dcm")
    with pytest.raises(DataError, match=r"frame 1 references e\.dcm frame 40, but that file has frames 1\.\.3"):
        open_dataset(enhanced, label_file=tmp_path / "elsewhere.dcm")
