"""Inputs that one NIfTI grid of axial slices cannot hold. A DICOM series whose slices are evenly
spaced along the normal but shifted in-plane off the line of the others (two reconstruction
centres in one series): NIfTI output is refused; a DICOM SEG references each slice and places it
exactly. A single sagittal image: refused, saying why."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from edgeseg.cli.main import cli
from tests.guarded_cli import GuardedCliRunner

SHIFT_MM = 5.0


def predict(*args) -> object:
    return GuardedCliRunner().invoke(cli, ["predict", *map(str, args), "--backend", "onnxruntime:fp32", "--quiet"])


def _series(tmp_path, shift_mm: float):
    """A 6-slice phantom series (IM0001.dcm lowest) whose slices 4..6 are moved ``shift_mm`` to
    the patient's left in ImagePositionPatient, along the normal unchanged."""
    from edgeseg.data import write_phantom_dataset
    from edgeseg.data.phantom import phantom_geometry

    shape, spacing = phantom_geometry(64, 6)
    write_phantom_dataset(tmp_path / "ds", 1, seed=2, shape=shape, spacing=spacing, image_format="dicom")
    series = tmp_path / "ds" / "case_000"
    for k in (4, 5, 6):
        path = series / f"IM{k:04d}.dcm"
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x + shift_mm:.6f}", f"{y:.6f}", f"{z:.6f}"]
        ds.save_as(path)
    return series


def test_a_slice_off_the_line_of_the_others_is_refused_as_nifti_and_placed_exactly_in_a_seg(bundle_dir, tmp_path,
                                                                                           caplog):
    from edgeseg.data.dicom import read_dicom_series

    series = _series(tmp_path, SHIFT_MM)
    # The oracle, from the construction: x steps 0, 0, 0, 5, 5, 5 mm against the straight line's
    # 0, 1, 2, 3, 4, 5 mm, so IM0003 (index 2) and IM0004 lie 2 mm off it.
    off_mm = 2 * SHIFT_MM / 5

    for out in (tmp_path / "labels.nii.gz", tmp_path / "labels.seg.nrrd"):
        result = predict(bundle_dir, series, "--out", out)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), result.output
        assert f"slice IM0003.dcm of {series} lies {off_mm:.3g} mm" in lines[0] and "dicom-seg" in lines[0]
        assert not out.exists()
    with caplog.at_level("WARNING", logger="edgeseg.data.dicom"):
        assert read_dicom_series(series).off_line == pytest.approx((off_mm, "IM0003.dcm"))
    assert not caplog.records  # told once, by the writer that refuses it; a SEG needs no word of it

    seg_out = tmp_path / "labels.dcm"
    done = predict(bundle_dir, series, "--out", seg_out)
    assert done.exit_code == 0, done.output
    seg = pydicom.dcmread(seg_out)
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, series.glob("IM*.dcm"))}
    placed = set()
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in sources[uid].ImagePositionPatient], abs=1e-4)
        placed.add(uid)
    assert placed == set(sources)


def test_positions_rounded_to_a_hundredth_of_a_millimetre_are_on_the_line(tmp_path):
    from edgeseg.data.dicom import read_dicom_series

    series = _series(tmp_path, 0.01)
    assert read_dicom_series(series).off_line is None


def test_a_nifti_of_one_sagittal_plane_is_refused_saying_so(bundle_dir, tmp_path):
    """A 64x64 image whose affine lays it in a sagittal plane reads as 64 axial slices one pixel
    wide; the refusal said only that slices need 2 rows and columns, which the image has."""
    nib = pytest.importorskip("nibabel")
    affine = np.array([[0, 0, -2.0, 10], [0.8, 0, 0, -20], [0, 0.8, 0, 30], [0, 0, 0, 1]])  # i to A, j to S
    assert nib.aff2axcodes(affine) == ("A", "S", "L")  # the oracle: nibabel's own orientation
    source = tmp_path / "sagittal.nii.gz"
    nib.save(nib.Nifti1Image(np.full((64, 64, 1), 40, np.int16), affine), str(source))
    out = tmp_path / "labels.nii.gz"
    result = predict(bundle_dir, source, "--out", out)
    assert result.exit_code == 2 and not out.exists(), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "axial slices are 64x1: one sagittal or coronal plane?" in lines[0], result.output
