"""Phantoms as DICOM CT series: each case a valid CT Image Storage series (dciodvfy) that reads
back to the phantom's own HU and geometry, with its NIfTI labels beside it, so the folder trains
and evaluates like the NIfTI dataset; bad volumes and inconsistent label folders are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgeseg.data import open_dataset, write_phantom_dataset
from edgeseg.data.chest_phantom import synth_chest_phantom
from edgeseg.data.dicom import read_dicom_series
from edgeseg.data.dicom_ct_writer import write_ct_series
from edgeseg.data.phantom import phantom_geometry, synth_phantom
from edgeseg.data.volume import Volume
from edgeseg.errors import DataError

SHAPE, SPACING = phantom_geometry(48, 6)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def edgeseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def chest_dicom(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chest-dicom") / "phantom"
    write_phantom_dataset(out, 3, seed=4, shape=SHAPE, spacing=SPACING, kind="chest", image_format="dicom")
    return out


def test_layout_series_folders_and_nifti_labels(chest_dicom):
    cases = ["case_000", "case_001", "case_002"]
    assert sorted(p.name for p in chest_dicom.iterdir()) == [*cases, "dataset.json", "labelsTr"]
    assert sorted(p.name for p in (chest_dicom / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(p.name for p in (chest_dicom / "case_001").iterdir()) == [f"IM{k:04d}.dcm" for k in range(1, 7)]
    manifest = json.loads((chest_dicom / "dataset.json").read_text())
    assert manifest["training"][1] == {"image": "./case_001", "label": "./labelsTr/case_001.nii.gz"}
    assert manifest["edgeseg"]["format"] == "dicom" and manifest["edgeseg"]["kind"] == "chest"


def test_series_read_back_to_the_phantom_hu_geometry_and_labels(chest_dicom):
    volumes = open_dataset(chest_dicom)
    assert [v.case_id for v in volumes] == ["case_000", "case_001", "case_002"]
    for volume in volumes:
        truth = synth_chest_phantom(volume.case_id, 4, shape=SHAPE, spacing=SPACING)
        np.testing.assert_array_equal(volume.hu, truth.hu)
        np.testing.assert_array_equal(volume.label, truth.label)
        np.testing.assert_allclose(volume.affine, truth.affine, atol=1e-6)
        assert volume.spacing == pytest.approx(SPACING)
        assert volume.slice_ids == [f"IM{k:04d}.dcm" for k in range(1, 7)]
    assert any({1, 2} <= set(np.unique(v.label).tolist()) for v in volumes)


def test_ct_image_attributes_and_uids(chest_dicom):
    series = {}
    for case in ("case_000", "case_001"):
        files = sorted((chest_dicom / case).iterdir())
        datasets = [pydicom.dcmread(path) for path in files]
        first = datasets[0]
        assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (first.SOPClassUID, first.file_meta.MediaStorageSOPClassUID) == (CT_IMAGE_STORAGE, CT_IMAGE_STORAGE)
        assert (first.Modality, first.PatientID, first.Rows, first.Columns) == ("CT", case, 48, 48)
        assert (first.RescaleSlope, first.RescaleIntercept, first.PixelRepresentation) == (1, -1024, 1)
        assert [float(v) for v in first.PixelSpacing] == pytest.approx([SPACING[1], SPACING[2]])
        assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        # Slice k lies k slice gaps above the first along +z (superior); HU = stored - 1024.
        z = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        assert np.diff(z) == pytest.approx([SPACING[0]] * 5)
        truth = synth_chest_phantom(case, 4, shape=SHAPE, spacing=SPACING)
        np.testing.assert_array_equal(datasets[2].pixel_array.astype(np.float32) - 1024, truth.hu[2])
        uids = {tag: {str(ds.get(tag)) for ds in datasets}
                for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")}
        assert [len(uids[t]) for t in uids] == [1, 1, 1, 6]
        assert all(pydicom.uid.UID(uid).is_valid for values in uids.values() for uid in values)
        assert {ds.file_meta.MediaStorageSOPInstanceUID for ds in datasets} == uids["SOPInstanceUID"]
        series[case] = uids
    assert not set().union(*series["case_000"].values()) & set().union(*series["case_001"].values())


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_every_file_passes_dciodvfy(chest_dicom, tmp_path):
    abdomen = tmp_path / "abdomen"
    write_phantom_dataset(abdomen, 1, seed=0, shape=(2, 40, 56), spacing=(3.0, 0.8, 0.8), image_format="dicom")
    files = sorted(chest_dicom.glob("case_*/*.dcm")) + sorted(abdomen.glob("case_*/*.dcm"))
    assert len(files) == 3 * 6 + 2
    for path in files:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        report = (done.stdout + done.stderr).splitlines()
        assert any(line.strip() == "CTImage" for line in report), report  # it recognised the IOD
        assert [line for line in report if line.startswith(("Error", "Warning"))] == [], path


def test_abdomen_series_of_a_non_square_grid_reads_back(tmp_path):
    volume = synth_phantom("case_003", 1, shape=(3, 40, 56), spacing=(3.0, 0.8, 0.7))
    files = write_ct_series(volume, tmp_path, description="edgeseg abdomen phantom case_003")
    back = read_dicom_series(tmp_path)
    assert len(files) == 3 and back.hu.shape == (3, 40, 56)
    np.testing.assert_array_equal(back.hu, volume.hu)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)


def test_synth_cli_writes_dicom_that_info_and_training_read(tmp_path):
    out = tmp_path / "chest"
    done = edgeseg("data", "synth", "--kind", "chest", "--format", "dicom", "--out", out, "--cases", 2, "--size", 32,
                   "--slices", 4, "--seed", 3, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "as DICOM CT series" in done.stdout and (out / "case_001" / "IM0004.dcm").is_file()
    info = edgeseg("data", "info", out, "--quiet")
    assert info.returncode == 0, info.stderr
    rows = {line.split()[0]: line for line in info.stdout.splitlines() if line.startswith("case_")}
    for case in ("case_000", "case_001"):
        label = synth_chest_phantom(case, 3, *phantom_geometry(32, 4)).label
        counts = " ".join(f"{v}:{int((label == v).sum())}" for v in (1, 2) if (label == v).any()) or "none"
        assert rows[case].endswith(counts), rows[case]


def _whole(volume: Volume, **changes) -> Volume:
    fields = dict(hu=volume.hu, spacing=volume.spacing, affine=volume.affine, case_id=volume.case_id)
    return Volume(**{**fields, **changes})


def test_volumes_dicom_cannot_hold_are_refused_before_writing(tmp_path):
    volume = synth_phantom("case_000", 0, shape=(2, 32, 32), spacing=(2.0, 1.0, 1.0))
    folder = tmp_path / "series"
    folder.mkdir()
    cases = [
        (_whole(volume, hu=volume.hu + 0.5), "whole-number HU"),
        (_whole(volume, hu=np.full_like(volume.hu, 40000)), "do not fit int16"),
        (_whole(volume, affine=np.array([[-1, 1, 0, 0], [0, -1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])),
         "not orthogonal"),
    ]
    for bad, message in cases:
        with pytest.raises(DataError, match=message):
            write_ct_series(bad, folder)
    with pytest.raises(DataError, match="longer than DICOM's 64 characters"):
        write_ct_series(volume, folder, description="x" * 65)
    assert list(folder.iterdir()) == []
    with pytest.raises(DataError, match="unknown phantom image format 'png'"):
        write_phantom_dataset(tmp_path / "p", 1, 0, shape=(2, 32, 32), image_format="png")
    assert not (tmp_path / "p").exists()


def test_label_folders_that_do_not_match_the_series_are_refused(chest_dicom, tmp_path):
    data = shutil.copytree(chest_dicom, tmp_path / "copy")
    shutil.copy(data / "labelsTr" / "case_000.nii.gz", data / "labelsTr" / "case_009.nii.gz")
    with pytest.raises(DataError, match="case_009.nii.gz has no series folder"):
        open_dataset(data)
    (data / "labelsTr" / "case_009.nii.gz").unlink()
    # Another case's label has another grid (size): refused, never attached.
    other = tmp_path / "other"
    write_phantom_dataset(other, 1, seed=4, shape=(6, 40, 40), spacing=SPACING, kind="chest")
    shutil.copy(other / "labelsTr" / "case_000.nii.gz", data / "labelsTr" / "case_001.nii.gz")
    with pytest.raises(DataError, match="case_001.nii.gz has shape"):
        open_dataset(data)
    shutil.copy(chest_dicom / "labelsTr" / "case_001.nii.gz", data / "labelsTr" / "case_001.nii.gz")
    assert len(open_dataset(data)) == 3
    # A SEG beside a series that also has a NIfTI label: two label maps for one case, refused.
    pytest.importorskip("highdicom")
    from edgeseg.data.dicom import read_dicom_series_with_refs
    from edgeseg.runtime.writers import write_dicom_seg

    volume, refs = read_dicom_series_with_refs(data / "case_002")
    label = synth_chest_phantom("case_002", 4, shape=SHAPE, spacing=SPACING).label
    write_dicom_seg(label, volume, refs, {0: "background", 1: "ggo", 2: "consolidation"}, data / "case_002" / "seg.dcm")
    with pytest.raises(DataError, match="case_002 in .* has a DICOM SEG and the label map .*case_002.nii.gz; keep one"):
        open_dataset(data)


def test_a_single_slice_without_a_thickness_is_read_at_1_mm_with_a_warning(tmp_path, caplog):
    """One slice names no distance to a neighbour; without SpacingBetweenSlices or SliceThickness
    its 1 mm was taken silently, though volumes in mL and 3-D distances use it."""
    import logging

    volume = synth_phantom("case_000", 0, shape=(1, 32, 32))
    (tmp_path / "one").mkdir()
    [path] = write_ct_series(volume, tmp_path / "one")
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        assert read_dicom_series(tmp_path / "one").spacing[0] == pytest.approx(volume.spacing[0])
    assert "taken as 1 mm" not in caplog.text  # the writer records the thickness
    dataset = pydicom.dcmread(path)
    for tag in ("SliceThickness", "SpacingBetweenSlices"):
        if tag in dataset:
            delattr(dataset, tag)
    dataset.save_as(path)
    with caplog.at_level(logging.WARNING, logger="edgeseg"):
        assert read_dicom_series(tmp_path / "one").spacing[0] == pytest.approx(1.0)
    assert f"{path} is a single slice without SpacingBetweenSlices or SliceThickness; its thickness is taken " \
           "as 1 mm" in caplog.text
