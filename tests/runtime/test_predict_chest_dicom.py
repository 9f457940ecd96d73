"""``edgeseg predict`` of a chest phantom written as a DICOM CT series, as a user runs it from a
fresh clone: the suite's chest bundle gives a NIfTI label map and a DICOM SEG with two coded
segments (ground-glass, consolidation) that reference the series, hold the same labels, find the
phantom's lesions, and pass dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.data.nifti import read_nifti
from edgeseg.data.phantom import phantom_geometry
from edgeseg.runtime.segment_codes import segment_coding

SIZE, SLICES, SEED = 128, 16, 11  # another resolution and seed than the bundle was trained on


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _phantom(case: str):
    return synth_chest_phantom(case, SEED, *phantom_geometry(SIZE, SLICES))


def _pick_case(cases: int) -> str:
    """The case with the most consolidation (the rarer class) among those that hold both classes."""
    labels = {f"case_{k:03d}": _phantom(f"case_{k:03d}").label for k in range(cases)}
    both = {c: int((lab == 2).sum()) for c, lab in labels.items() if {1, 2} <= set(np.unique(lab).tolist())}
    return max(both, key=both.get)


@pytest.fixture(scope="module")
def predicted(chest_bundle_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("chest-predict")
    bundle = chest_bundle_run / "bundle"
    done = edgeseg("data", "synth", "--kind", "chest", "--format", "dicom", "--out", root / "phantom", "--cases", 4,
                   "--size", SIZE, "--slices", SLICES, "--seed", SEED, "--quiet")
    assert done.returncode == 0, done.stderr
    case = _pick_case(4)
    series = root / "phantom" / case
    outputs = {"nifti": root / f"{case}.nii.gz", "dicom-seg": root / f"{case}.seg.dcm"}
    for fmt, out in outputs.items():
        done = edgeseg("predict", bundle, series, "--out", out, "--format", fmt, "--backend", "onnxruntime:fp32",
                       "--quiet")
        assert done.returncode == 0, done.stderr
        assert f"{case}: {SLICES} slices" in done.stdout and "ggo=" in done.stdout and "consolidation=" in done.stdout
    return case, series, outputs


def test_seg_has_two_coded_segments_referencing_the_series(predicted):
    hd = pytest.importorskip("highdicom")
    case, series, outputs = predicted
    seg = hd.seg.segread(outputs["dicom-seg"])
    assert [d.segment_label for d in seg.SegmentSequence] == ["ggo", "consolidation"]
    for number, name in ((1, "ggo"), (2, "consolidation")):
        description, coding = seg.get_segment_description(number), segment_coding(name)
        got = description.segmented_property_type
        assert (got.scheme_designator, got.value, got.meaning) == (
            coding.property_type.scheme, coding.property_type.value, coding.property_type.meaning)
        assert description.segmented_property_category.value == coding.category.value
        assert [r.value for r in description.anatomic_regions] == [coding.region.value]
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources}
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (
        sources[0].StudyInstanceUID, sources[0].FrameOfReferenceUID, case)


def test_seg_and_nifti_hold_the_labels_of_the_phantom_volume_itself(predicted, chest_bundle_run):
    hd = pytest.importorskip("highdicom")
    from edgeseg.runtime import Segmenter

    case, series, outputs = predicted
    volume, refs = read_dicom_series_with_refs(series)
    labels = read_nifti(outputs["nifti"]).hu.astype(np.uint8)
    assert labels.shape == volume.hu.shape == (SLICES, SIZE, SIZE)
    seg = hd.seg.segread(outputs["dicom-seg"])
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(refs.sop_instance_uids),
                                               segment_numbers=[1, 2])
    from_seg = refs.from_source_layout(pixels[..., 0].astype(np.uint8) + 2 * pixels[..., 1].astype(np.uint8))
    np.testing.assert_array_equal(from_seg, labels)
    assert pixels[..., 0].any() and pixels[..., 1].any()  # both segments hold lesion pixels
    # The DICOM round trip changes nothing: the phantom volume segmented in memory gives the same labels.
    with Segmenter.load(chest_bundle_run / "bundle", backend="onnxruntime:fp32") as segmenter:
        np.testing.assert_array_equal(segmenter.predict_volume(_phantom(case)), labels)
    truth = _phantom(case).label
    for value in (1, 2):
        p, t = labels == value, truth == value
        dice = 2 * int((p & t).sum()) / (int(p.sum()) + int(t.sum()))
        assert dice > 0.5, (value, dice)  # a model that missed or misplaced the lesions scores about 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_seg_passes_dciodvfy(predicted):
    done = subprocess.run(["dciodvfy", str(predicted[2]["dicom-seg"])], capture_output=True, text=True)
    report = (done.stdout + done.stderr).splitlines()
    assert any(line.strip() == "Segmentation" for line in report), report
    assert [line for line in report if line.startswith("Error")] == []


def test_seg_of_two_segments_states_the_spacing_of_its_slices(predicted):
    """Frames of the two segments lie at the same positions: Spacing Between Slices is the
    distance between the slices (the oracle: the series' positions along the normal of its
    orientation, read with pydicom), not that between two frames of one slice (0)."""
    case, series, outputs = predicted
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(series.iterdir())]
    cosines = np.asarray(sources[0].ImageOrientationPatient, dtype=float)
    heights = np.sort([np.cross(cosines[:3], cosines[3:]) @ np.asarray(ds.ImagePositionPatient, dtype=float)
                       for ds in sources])
    (spacing,) = set(np.round(np.diff(heights), 4))
    seg = pydicom.dcmread(outputs["dicom-seg"])
    segments = [frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
                for frame in seg.PerFrameFunctionalGroupsSequence]
    positions = [tuple(frame.PlanePositionSequence[0].ImagePositionPatient) for frame in seg.PerFrameFunctionalGroupsSequence]
    assert set(segments) == {1, 2} and len(set(positions)) < len(positions)  # slices holding both segments
    (measures,) = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert float(measures.SpacingBetweenSlices) == pytest.approx(spacing, abs=1e-4)
