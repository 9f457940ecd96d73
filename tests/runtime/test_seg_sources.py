"""``edgeseg predict --format dicom-seg`` of series whose headers a SEG cannot be made from as
they are: refused in one line naming the file and the field, with no SEG written; and of a series
without the Type 2 patient and study fields (as anonymisers leave them): a SEG that holds them
empty and passes dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

SERIES = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _series(folder: Path, edit) -> Path:
    """The dcmqi series copied to ``folder`` with ``edit(k, dataset)`` applied to its k-th file."""
    folder.mkdir()
    for k, path in enumerate(sorted(SERIES.glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        edit(k, dataset)
        dataset.save_as(folder / path.name)
    return folder


def _predict(bundle, series: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bundle), str(series), "--out", str(out),
                           "--format", "dicom-seg", "--backend", "onnxruntime:fp32", "--quiet"],
                          capture_output=True, text=True, timeout=300)


def _same_sop(k, ds):
    if k == 2:
        first = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0]).SOPInstanceUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = first


def _other_study(k, ds):
    if k == 1:
        ds.StudyInstanceUID = pydicom.uid.generate_uid()


HOSTILE = {
    "no frame of reference": (lambda k, ds: delattr(ds, "FrameOfReferenceUID"), "has no FrameOfReferenceUID"),
    "empty study uid": (lambda k, ds: setattr(ds, "StudyInstanceUID", ""), "has no StudyInstanceUID"),
    "a file of another study": (_other_study, "a DICOM SEG covers images of one study"),
    "two files of one instance": (_same_sop, "have the same SOPInstanceUID"),
    "patient sex spelt out": (lambda k, ds: setattr(ds, "PatientSex", "MALE"), "field PatientSex is 'MALE'"),
    "iso date": (lambda k, ds: setattr(ds, "StudyDate", "2020-01-01"), "field StudyDate is '2020-01-01'"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_series_a_seg_cannot_reference_is_one_line(case, exported_bundle, tmp_path, assert_one_line_error):
    edit, fragment = HOSTILE[case]
    series = _series(tmp_path / "series", edit)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert_one_line_error(done, fragment)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["series"]


def test_series_without_type2_patient_fields_gets_a_valid_seg(exported_bundle, tmp_path):
    def anonymise(k, ds):
        for field in TYPE2:
            if field in ds:
                delattr(ds, field)

    series = _series(tmp_path / "series", anonymise)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    seg = pydicom.dcmread(out)
    # Type 2: present and empty, as DICOM writes an unknown value; the study is the source's
    assert all(field in seg and not str(seg[field].value or "") for field in TYPE2)
    assert seg.StudyInstanceUID == pydicom.dcmread(next(series.iterdir())).StudyInstanceUID
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (checked.stdout + checked.stderr).splitlines() if ln.startswith("Error")]
        assert errors == []


def _heights(series: Path) -> list[float]:
    """The slices' positions along the normal of their orientation, read with pydicom: the oracle."""
    import numpy as np

    datasets = [pydicom.dcmread(path) for path in sorted(series.glob("*.dcm"))]
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    return sorted(float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))) for ds in datasets)


THICKNESS_GONE = {
    "absent": lambda k, ds: delattr(ds, "SliceThickness"),
    "empty": lambda k, ds: setattr(ds, "SliceThickness", None),
    "absent from one slice": lambda k, ds: delattr(ds, "SliceThickness") if k == 1 else None,
}


@pytest.mark.parametrize("case", sorted(THICKNESS_GONE))
def test_series_without_slice_thickness_gets_a_valid_seg_stating_its_spacing(case, exported_bundle, tmp_path):
    """SliceThickness may be absent or empty in a CT image (Type 2) but not in the SEG's Pixel
    Measures (Type 1C): an absent one ended in "'FileDataset' object has no attribute
    'SliceThickness'", an empty one in a SEG dciodvfy calls invalid. Now the slices without it
    state the series' slice spacing, with a warning saying so."""
    series = _series(tmp_path / "series", THICKNESS_GONE[case])
    out = tmp_path / "out.seg.dcm"
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(exported_bundle), str(series),
                           "--out", str(out), "--format", "dicom-seg", "--backend", "onnxruntime:fp32"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    heights = _heights(series)
    spacing = sorted(abs(b - a) for a, b in zip(heights, heights[1:]))[(len(heights) - 1) // 2]
    seg = pydicom.dcmread(out)
    stated = float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness)
    if case == "absent from one slice":  # the thickness the other slices state, not their spacing
        (original,) = {float(pydicom.dcmread(path).SliceThickness) for path in SERIES.glob("*.dcm")}
        assert "have no SliceThickness; their DICOM SEG states that of the others" in done.stderr
        assert stated == original != pytest.approx(spacing, abs=1e-4)
    else:
        assert "have no SliceThickness; their DICOM SEG states the slice spacing" in done.stderr
        assert stated == pytest.approx(spacing, abs=1e-4)
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=120)
        assert [ln for ln in (checked.stdout + checked.stderr).splitlines() if ln.startswith("Error")] == []


def _dciodvfy_errors(path: Path) -> list[str]:
    if not shutil.which("dciodvfy"):
        return []
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    return [ln for ln in (checked.stdout + checked.stderr).splitlines() if ln.startswith("Error")]


def test_slices_of_differing_thickness_get_a_seg_stating_each(exported_bundle, tmp_path):
    """highdicom shares the first slice's Pixel Measures in the SEG: a slice of another thickness got
    the first one's without a word, then the series was refused before the model ran ("03.dcm and
    02.dcm have SliceThickness 7.5 and 1.250000; a DICOM SEG states one for all the frames it
    covers"). Now each SEG frame states the thickness of the slice it references (the oracle: the
    source files read with pydicom), the SEG passes dciodvfy, and both edgeseg's reader and
    highdicom read it back as the label map predict writes for the series."""
    import numpy as np

    from edgeseg.data.dicom import read_dicom_series_with_refs
    from edgeseg.data.open import open_dataset

    hd = pytest.importorskip("highdicom")
    series = _series(tmp_path / "series", lambda k, ds: setattr(ds, "SliceThickness", "7.5") if k == 2 else None)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    assert _dciodvfy_errors(out) == []
    seg = pydicom.dcmread(out)
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, series.glob("*.dcm"))}
    stated = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = frame.DerivationImageSequence[0].SourceImageSequence
        source = sources[reference.ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in source.ImagePositionPatient], atol=1e-4)
        (measures,) = frame.PixelMeasuresSequence
        assert float(measures.SliceThickness) == float(source.SliceThickness)
        stated.append(float(measures.SliceThickness))
    assert sorted(stated) == [1.25, 1.25, 7.5]
    npy = tmp_path / "labels.npy"
    assert subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(exported_bundle), str(series),
                           "--out", str(npy), "--backend", "onnxruntime:fp32", "--quiet"], timeout=300).returncode == 0
    labels = np.load(npy)
    assert labels.any()  # the model found liver: the comparison covers labels
    (case,) = open_dataset(series, label_file=out)
    np.testing.assert_array_equal(case.label, labels)
    _, refs = read_dicom_series_with_refs(series)
    read = hd.seg.segread(out).get_pixels_by_source_instance(list(refs.sop_instance_uids), combine_segments=True,
                                                             ignore_spatial_locations=True)
    np.testing.assert_array_equal(read, refs.to_source_layout(labels))


def test_a_slice_without_thickness_among_two_thicknesses_states_the_slice_spacing(exported_bundle, tmp_path):
    """The others state no one thickness to take: the slice without one states the series' slice
    spacing (1 mm, the oracle from the positions read with pydicom), the others their own."""
    def edit(k, ds):
        if k == 0:
            del ds.SliceThickness
        elif k == 2:
            ds.SliceThickness = "7.5"

    series = _series(tmp_path / "series", edit)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    assert _dciodvfy_errors(out) == []
    assert "1 of its 3 slices have no SliceThickness; their DICOM SEG states the slice spacing" in done.stderr
    heights = _heights(series)
    (spacing,) = {round(b - a, 4) for a, b in zip(heights, heights[1:])}
    stated = {frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID:
              float(frame.PixelMeasuresSequence[0].SliceThickness) for frame in pydicom.dcmread(out).PerFrameFunctionalGroupsSequence}
    expected = {ds.SOPInstanceUID: float(ds.get("SliceThickness") or spacing)
                for ds in map(pydicom.dcmread, sorted(series.glob("*.dcm")))}
    assert stated == expected and sorted(expected.values()) == [1.0, 1.25, 7.5]


def _shift_last(k, ds):
    """The third slice a millimetre further: gaps of 1 and 2 mm."""
    if k == 2:
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) - 1]


SPACINGS = {"stated wrong": (lambda k, ds: setattr(ds, "SpacingBetweenSlices", "5"), 1.0),
            "uneven gaps": (lambda k, ds: (setattr(ds, "SpacingBetweenSlices", "1"), _shift_last(k, ds)), None)}


@pytest.mark.parametrize("case", sorted(SPACINGS))
def test_spacing_between_slices_is_that_of_the_seg_frames(case, exported_bundle, tmp_path):
    """highdicom copies the first slice's SpacingBetweenSlices into the SEG for all frames: 5 mm
    for slices 1 mm apart, 1 mm for slices whose gaps differ. Now the SEG states the spacing of its
    frames' positions (the oracle: the sources' positions read with pydicom), or none where the gaps
    differ (it is Type 3)."""
    edit, expected = SPACINGS[case]
    series = _series(tmp_path / "series", edit)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    assert _dciodvfy_errors(out) == []
    heights = _heights(series)
    gaps = [b - a for a, b in zip(heights, heights[1:])]
    (measures,) = pydicom.dcmread(out).SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    if expected is None:
        assert max(gaps) - min(gaps) > 0.5 and "SpacingBetweenSlices" not in measures
    else:
        assert gaps == pytest.approx([expected] * 2, abs=1e-4)
        assert float(measures.SpacingBetweenSlices) == pytest.approx(expected, abs=1e-4)


def test_a_single_slice_without_slice_thickness_is_one_line(exported_bundle, tmp_path, assert_one_line_error):
    series = tmp_path / "series"
    series.mkdir()
    first = sorted(SERIES.glob("*.dcm"))[0]
    dataset = pydicom.dcmread(first)
    del dataset.SliceThickness
    dataset.save_as(series / first.name)
    out = tmp_path / "out.seg.dcm"
    assert_one_line_error(_predict(exported_bundle, series, out),
                          "has no SliceThickness, and a series of one slice has no spacing to state instead")
    assert not out.exists()



def test_a_seg_of_one_slice_keeps_the_spacing_its_source_states(exported_bundle, tmp_path):
    """One position has no spacing to measure: the SEG keeps the Spacing Between Slices of its
    source (the oracle: the source file read with pydicom), where frames of uneven gaps lose it."""
    series = tmp_path / "series"
    series.mkdir()
    middle = sorted(SERIES.glob("*.dcm"))[1]
    dataset = pydicom.dcmread(middle)
    dataset.SpacingBetweenSlices = "2.5"
    dataset.save_as(series / middle.name)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    seg = pydicom.dcmread(out)
    assert len(seg.PerFrameFunctionalGroupsSequence) == 1  # the model found liver on it: one frame
    (measures,) = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert float(measures.SpacingBetweenSlices) == float(pydicom.dcmread(series / middle.name).SpacingBetweenSlices)

# Specific Character Sets as scanners write them, with names in them: Japanese and Korean series
# leave the first of their values empty (the default repertoire, with code extensions)
CHARACTER_SETS = {
    "japanese": (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    "korean": (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동"),
    "latin-1 with code extensions, alone": ("ISO 2022 IR 100", "Müller^Jürgen"),
    "ISO_IR 6": ("ISO_IR 6", "Smith^John"),
    "utf-8": ("ISO_IR 192", "Müller^Jürgen"),
}


@pytest.mark.parametrize("case", sorted(CHARACTER_SETS))
def test_seg_of_a_series_in_any_character_set_keeps_the_patient_name(case, exported_bundle, tmp_path):
    """A series whose Specific Character Set highdicom does not take as written got no SEG, one line
    "'' is not a valid SpecificCharacterSetValues": every Japanese series written '\\ISO 2022 IR 87'.
    The SEG now holds the patient's name as pydicom reads it from the source, and passes dciodvfy
    and highdicom."""
    hd = pytest.importorskip("highdicom")
    charset, name = CHARACTER_SETS[case]

    def name_it(k, ds):
        ds.SpecificCharacterSet, ds.PatientName, ds.StudyDescription = charset, name, "CT Abdomen"

    series = _series(tmp_path / "series", name_it)
    out = tmp_path / "out.seg.dcm"
    done = _predict(exported_bundle, series, out)
    assert done.returncode == 0, done.stderr
    source = pydicom.dcmread(next(series.iterdir()))
    seg = pydicom.dcmread(out)
    assert str(seg.PatientName) == str(source.PatientName) == name
    assert str(seg.StudyDescription) == "CT Abdomen"
    assert hd.seg.segread(out).PatientName == seg.PatientName
    if shutil.which("dciodvfy"):
        checked = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, errors="replace", timeout=120)
        problems = [ln for ln in (checked.stdout + checked.stderr).splitlines() if ln.startswith(("Error", "Warning"))]
        assert problems == []


def test_a_seg_of_a_series_read_for_one_reads_each_source_file_once(tmp_path, monkeypatch):
    """predict's and the DICOM node's way to a SEG: the series is read keeping its headers, which
    the SEG copies from; reading the 600 files of a series a second time took a third of the
    SEG's time. The headers kept hold no pixel data."""
    import highdicom as hd
    import numpy as np

    from edgeseg.runtime.readers import read_input
    from edgeseg.runtime.writers import write_dicom_seg

    reads, real_read = [], pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda path, *a, **k: reads.append(Path(path).name) or real_read(path, *a, **k))
    volume, refs = read_input(SERIES, keep_headers=True)
    labels = (volume.hu > 100).astype(np.uint8)
    out = write_dicom_seg(labels, volume, refs, {0: "background", 1: "liver"}, tmp_path / "liver.seg.dcm")
    assert sorted(reads) == sorted(p.name for p in SERIES.glob("*.dcm"))
    assert not any("PixelData" in header for header in refs.headers)
    seg = hd.seg.segread(out)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(refs.sop_instance_uids),
                                               segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), refs.to_source_layout(labels) == 1)
