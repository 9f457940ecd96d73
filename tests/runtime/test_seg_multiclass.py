"""DICOM SEG with one coded segment per class: chest-phantom lesion labels on a real CT series,
read back with highdicom and checked by dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.data.dicom import read_dicom_series_with_refs
from edgeseg.runtime.segment_codes import class_codings, segment_coding
from edgeseg.runtime.writers import write_dicom_seg

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
CLASSES = {0: "background", 1: "ggo", 2: "consolidation"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    volume, refs = read_dicom_series_with_refs(SERIES)
    # Chest-phantom lesion labels drawn on the series' 512 x 512 grid: the three slices with most lesion.
    chest = synth_chest_phantom("case_001", seed=0, shape=(16, *volume.hu.shape[1:]), spacing=(2.5, 0.75, 0.75))
    both = ((chest.label == 1).sum(axis=(1, 2)) > 0) & ((chest.label == 2).sum(axis=(1, 2)) > 0)
    order = np.argsort(-(chest.label > 0).sum(axis=(1, 2)) - both * 10**6)
    labels = chest.label[np.sort(order[: volume.num_slices])]
    assert {1, 2} <= set(np.unique(labels).tolist())
    out = tmp_path_factory.mktemp("seg") / "chest.seg.dcm"
    write_dicom_seg(labels, volume, refs, CLASSES, out)
    return out, labels, volume, refs


def test_each_class_is_one_coded_segment_read_back_by_highdicom(written):
    import highdicom as hd

    out, labels, volume, refs = written
    seg = hd.seg.segread(out)
    assert [d.segment_label for d in seg.SegmentSequence] == ["ggo", "consolidation"]
    ggo, consolidation = (seg.get_segment_description(n) for n in (1, 2))
    assert (ggo.segmented_property_type.scheme_designator, ggo.segmented_property_type.value) == ("DCM", "112120")
    assert (consolidation.segmented_property_type.scheme_designator,
            consolidation.segmented_property_type.value) == ("SCT", "95436008")
    for description in (ggo, consolidation):
        assert description.segmented_property_category.value == "49755003"  # morphologically abnormal structure
        assert [r.value for r in description.anatomic_regions] == ["39607008"]  # lung
    # Pixels per segment and source instance equal the label map drawn, in the series' file order.
    expected = refs.to_source_layout(labels)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(refs.sop_instance_uids), segment_numbers=[1, 2])
    assert pixels.shape == (len(refs.files), *expected.shape[1:], 2)
    for k in range(len(refs.files)):
        for number in (1, 2):
            np.testing.assert_array_equal(pixels[k, ..., number - 1].astype(bool), expected[k] == number)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_two_segment_seg_passes_dciodvfy(written):
    done = subprocess.run(["dciodvfy", str(written[0])], capture_output=True, text=True)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


def test_codes_for_known_names_synonyms_and_unknown_names():
    assert str(segment_coding("Liver").property_type) == "SCT 10200004 Liver"
    assert segment_coding("ground-glass").property_type.value == "112120"
    assert segment_coding("CONSOLIDATION").property_type.value == "95436008"
    assert segment_coding("femur").property_type.value == "85756007"  # tissue, label text kept
    assert class_codings(CLASSES) == [
        {"value": 1, "name": "ggo", "category": "SCT 49755003 Morphologically Abnormal Structure",
         "type": "DCM 112120 Ground glass opacity", "region": "SCT 39607008 Lung"},
        {"value": 2, "name": "consolidation", "category": "SCT 49755003 Morphologically Abnormal Structure",
         "type": "SCT 95436008 Lung consolidation", "region": "SCT 39607008 Lung"},
    ]


def _mirrored_series(folder: Path) -> Path:
    """The 3-slice series stored with its columns mirrored (row direction -x, first pixel moved to
    the old last column): the same anatomy in the same place, on another pixel grid."""
    import pydicom

    folder.mkdir()
    for path in sorted(SERIES.iterdir()):
        ds = pydicom.dcmread(path)
        row = np.array(ds.ImageOrientationPatient[:3], dtype=float)
        step = float(ds.PixelSpacing[1])
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + (ds.Columns - 1) * step * row]
        ds.ImageOrientationPatient = [*(-row).tolist(), *[float(v) for v in ds.ImageOrientationPatient[3:]]]
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
        ds.save_as(folder / path.name)
    return folder


def _classes(hu: np.ndarray) -> np.ndarray:
    return ((hu >= -100) & (hu < 150)).astype(np.uint8) + 2 * (hu >= 150).astype(np.uint8)


@pytest.mark.parametrize("mirrored", [False, True])
def test_each_frame_holds_its_source_instance_pixels_read_back_with_pydicom(tmp_path, mirrored):
    """Labels drawn from the CT numbers themselves: every frame of the SEG, found by its segment
    number and referenced instance, must equal those labels computed on that instance's own
    pixels, one frame per segment and source instance, an empty one included (segment 2 is
    taken off the middle slice, the middle one in either slice order)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    series = _mirrored_series(tmp_path / "mirrored") if mirrored else SERIES
    volume, refs = read_dicom_series_with_refs(series)
    out = tmp_path / "seg.dcm"
    labels = _classes(volume.hu)
    labels[1][labels[1] == 2] = 0
    write_dicom_seg(labels, volume, refs, CLASSES, out)

    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in sorted(series.iterdir()))}
    middle = sorted(sources, key=lambda uid: float(sources[uid].ImagePositionPatient[2]))[1]
    seg = pydicom.dcmread(out)
    frames, rows, cols = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
    bits = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")[: frames * rows * cols]
    pixels = bits.reshape(frames, rows, cols).astype(bool)
    seen = set()
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        expected = _classes(apply_modality_lut(source.pixel_array, source)) == number
        if (number, uid) == (2, middle):
            expected[:] = False
        else:
            assert expected.any() and not expected.all()
        np.testing.assert_array_equal(frame, expected, err_msg=f"segment {number} on {uid}")
        seen.add((number, uid))
    assert frames == len(seen) == 2 * len(sources)


def test_labels_with_another_slice_count_than_the_series_are_refused(tmp_path):
    from edgeseg.errors import DataError

    volume, refs = read_dicom_series_with_refs(SERIES)
    with pytest.raises(DataError, match="labels have 2 slices but the series has 3 files"):
        write_dicom_seg(np.zeros((2, *volume.hu.shape[1:]), np.uint8), volume, refs, CLASSES, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
