"""A CT series acquired with a gantry tilt: slice planes tilted, ImagePositionPatient stepping
along the table. Checked against numpy geometry computed from the DICOM fields themselves."""

from __future__ import annotations

import itertools

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edgeseg.data import read_dicom_series
from edgeseg.metrics import class_metrics, hd95

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
TABLE_STEP_MM = 1.25
PIXEL_MM = 0.8


def write_tilted_series(folder, tilt_degrees: float, slices: int = 10, size: int = 24) -> dict:
    """A CT series tilted about the patient's left-right axis; returns the fields written."""
    folder.mkdir()
    tilt = np.radians(tilt_degrees)
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(tilt), np.sin(tilt)])
    positions = [np.array([-9.5, -7.0, 3.0 + k * TABLE_STEP_MM]) for k in range(slices)]
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    pixels = []
    for k, position in enumerate(positions):
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CT_IMAGE_STORAGE, generate_uid(), "CT"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.ImagePositionPatient = [f"{v:.10g}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row, *column)]
        ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        stored = (np.arange(size * size).reshape(size, size) % 97 + 100 * k).astype("<i2")
        ds.PixelData = stored.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        # file names against the slice order: the reader must sort by position
        ds.save_as(folder / f"IM{slices - k:03d}.dcm", enforce_file_format=True)
        pixels.append(stored.astype(np.float32) - 1024)
    return {"row": row, "column": column, "positions": np.array(positions), "hu": np.stack(pixels)}


def world_lps(fields: dict, index_zyx: np.ndarray) -> np.ndarray:
    """Patient coordinates (LPS mm) of voxel centres, straight from the DICOM definition:
    ImagePositionPatient of the slice + column index x PixelSpacing along the row cosine + row
    index x PixelSpacing along the column cosine."""
    z, y, x = (index_zyx[:, axis] for axis in range(3))
    return (fields["positions"][z] + (x * PIXEL_MM)[:, None] * fields["row"]
            + (y * PIXEL_MM)[:, None] * fields["column"])


@pytest.mark.parametrize("tilt", [15.0, 30.0])
def test_slice_spacing_is_the_distance_between_the_tilted_planes(tmp_path, tilt):
    fields = write_tilted_series(tmp_path / "ct", tilt)
    volume = read_dicom_series(tmp_path / "ct")
    normal = np.cross(fields["row"], fields["column"])
    plane_distance = float((fields["positions"][1] - fields["positions"][0]) @ normal)
    assert plane_distance < TABLE_STEP_MM * 0.97  # the slanted step is longer: the case is a real tilt
    np.testing.assert_array_equal(volume.hu, fields["hu"])  # slice k of the volume is the k-th position
    assert volume.spacing == pytest.approx((plane_distance, PIXEL_MM, PIXEL_MM), abs=1e-6)
    edges = np.stack([fields["row"] * PIXEL_MM, fields["column"] * PIXEL_MM, fields["positions"][1] - fields["positions"][0]])
    assert np.prod(volume.spacing) == pytest.approx(abs(np.linalg.det(edges)), rel=1e-6)
    # the affine (written into NIfTI output) still places every voxel exactly, shear included
    corners = np.array(list(itertools.product((0, 9), (0, 23), (0, 23))))
    placed = (volume.affine @ np.c_[corners[:, ::-1], np.ones(len(corners))].T).T[:, :3] * [-1, -1, 1]
    np.testing.assert_allclose(placed, world_lps(fields, corners), atol=1e-6)


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour (in array index space) outside the mask or the array."""
    padded = np.pad(mask, 1)
    interior = padded.copy()
    for axis, step in itertools.product(range(3), (-1, 1)):
        interior &= np.roll(padded, step, axis=axis)
    return mask & ~interior[1:-1, 1:-1, 1:-1]


def hd95_in_patient_space(fields: dict, a: np.ndarray, b: np.ndarray) -> float:
    points_a, points_b = world_lps(fields, np.argwhere(surface(a))), world_lps(fields, np.argwhere(surface(b)))
    distances = np.sqrt(((points_a[:, None] - points_b[None]) ** 2).sum(axis=-1))
    return float(max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95)))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_of_a_tilted_series_is_measured_where_the_voxels_lie(tmp_path, seed):
    fields = write_tilted_series(tmp_path / "ct", 25.0)
    volume = read_dicom_series(tmp_path / "ct")
    rng = np.random.default_rng(seed)
    truth = np.zeros(volume.hu.shape, dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth[2:8, 5:15, 6:16] = 1
    pred[3:9, 7:19, 4:14] = 1
    pred[rng.random(pred.shape) < 0.02] = 1
    oracle = hd95_in_patient_space(fields, pred == 1, truth == 1)
    stacked_squarely = hd95(pred, truth, spacing=volume.spacing)
    assert abs(stacked_squarely - oracle) > 0.05  # the shear matters for these masks
    assert hd95(pred, truth, grid=volume.axes_mm) == pytest.approx(oracle, rel=1e-9)
    metrics = class_metrics(pred, truth, 2, grid=volume.axes_mm)
    assert metrics[1]["hd95"] == pytest.approx(oracle, rel=1e-9)


def test_hd95_on_an_orthogonal_grid_matrix_equals_the_spacing_result():
    rng = np.random.default_rng(3)
    a, b = rng.random((6, 9, 7)) < 0.3, rng.random((6, 9, 7)) < 0.3
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    spacing = (2.5, 0.7, 0.9)
    assert hd95(a, b, grid=rotation * spacing) == pytest.approx(hd95(a, b, spacing=spacing), rel=1e-12)


def test_nifti_of_a_tilted_series_keeps_the_shear_in_its_sform_and_warns_of_the_qform(tmp_path, caplog):
    nib = pytest.importorskip("nibabel")
    from edgeseg.runtime.writers import write_nifti

    fields = write_tilted_series(tmp_path / "ct", 20.0)
    volume = read_dicom_series(tmp_path / "ct")
    labels = np.zeros(volume.hu.shape, dtype=np.uint8)
    labels[4, 10, 7] = 1
    with caplog.at_level("WARNING", logger="edgeseg.runtime.writers"):
        out = write_nifti(labels, volume, tmp_path / "mask.nii.gz")
    assert [r.getMessage() for r in caplog.records if "sheared" in r.getMessage()], caplog.text
    image = nib.load(str(out))
    (x, y, z), = np.argwhere(np.asarray(image.dataobj) == 1)
    placed_ras = image.get_sform() @ [x, y, z, 1.0]
    np.testing.assert_allclose(placed_ras[:3] * [-1, -1, 1], world_lps(fields, np.array([[4, 10, 7]]))[0], atol=1e-4)
    # the qform cannot hold the shear: it places the voxel elsewhere, which is what the warning says
    assert np.linalg.norm(image.get_qform() @ [x, y, z, 1.0] - placed_ras) > 0.1


def _corner_offset_mm(image) -> float:
    """The oracle: the largest distance between where the qform and the sform nibabel reads from a
    written NIfTI place a corner voxel of its grid."""
    corners = np.array([[*c, 1.0] for c in itertools.product(*[(0, n - 1) for n in image.shape[:3]])])
    return float(np.linalg.norm(corners @ (image.get_qform() - image.get_sform()).T, axis=1).max())


def test_the_warning_of_a_tilted_series_says_how_far_the_qform_misplaces_a_voxel(tmp_path, caplog):
    nib = pytest.importorskip("nibabel")
    from edgeseg.runtime.writers import write_nifti

    write_tilted_series(tmp_path / "ct", 20.0)
    volume = read_dicom_series(tmp_path / "ct")
    with caplog.at_level("WARNING", logger="edgeseg.runtime.writers"):
        out = write_nifti(np.zeros(volume.hu.shape, dtype=np.uint8), volume, tmp_path / "mask.nii.gz")
    assert f"up to {_corner_offset_mm(nib.load(str(out))):.3g} mm off" in caplog.text


def test_an_oblique_series_with_positions_rounded_to_a_hundredth_of_a_mm_does_not_warn(tmp_path, caplog):
    """Tilted slice planes stepping along their own normal (an oblique acquisition, no gantry tilt)
    with ImagePositionPatient written to two decimals: the rounding shears the grid by a few
    micrometres, which no viewer shows, so NIfTI and .seg.nrrd output do not warn of a shear."""
    nib = pytest.importorskip("nibabel")
    from edgeseg.runtime.writers import write_nifti, write_seg_nrrd

    fields = write_tilted_series(tmp_path / "ct", 20.0)
    normal = np.cross(fields["row"], fields["column"])
    for k, path in enumerate(sorted((tmp_path / "ct").iterdir(), reverse=True)):  # IM010 is the first slice
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{v:.2f}" for v in fields["positions"][0] + k * TABLE_STEP_MM * normal]
        ds.save_as(path)
    volume = read_dicom_series(tmp_path / "ct")
    with caplog.at_level("WARNING", logger="edgeseg.runtime.writers"):
        out = write_nifti(np.zeros(volume.hu.shape, dtype=np.uint8), volume, tmp_path / "mask.nii.gz")
        write_seg_nrrd(np.zeros(volume.hu.shape, dtype=np.uint8), volume, {1: "liver"}, tmp_path / "mask.seg.nrrd")
    assert "sheared" not in caplog.text
    assert _corner_offset_mm(nib.load(str(out))) < 0.1 * PIXEL_MM


def test_nifti_of_an_untilted_series_does_not_warn(tmp_path, caplog):
    pytest.importorskip("nibabel")
    from edgeseg.runtime.writers import write_nifti

    write_tilted_series(tmp_path / "ct", 0.0)
    volume = read_dicom_series(tmp_path / "ct")
    with caplog.at_level("WARNING", logger="edgeseg.runtime.writers"):
        write_nifti(np.zeros(volume.hu.shape, dtype=np.uint8), volume, tmp_path / "mask.nii.gz")
    assert "sheared" not in caplog.text


@pytest.mark.parametrize("name, kind", [("mask.nii.gz", "NIfTI output"), ("mask.seg.nrrd", "Slicer segmentation output")])
def test_predict_of_a_tilted_series_names_its_own_output_in_the_warning(exported_bundle, tmp_path, name, kind):
    """predict writes its outputs beside their places first and lands them together: the warning
    must name the file the user asked for, not the hidden temporary that is gone by the end."""
    import subprocess
    import sys

    pytest.importorskip("nibabel")
    write_tilted_series(tmp_path / "ct", 20.0)
    out = tmp_path / name
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(exported_bundle), str(tmp_path / "ct"),
                           "--out", str(out), "--backend", "onnxruntime:fp32"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "sheared" in line]
    assert len(warned) == 1 and warned[0].startswith(f"edgeseg: warning: {kind} {out}: "), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct", out.name])


def test_a_tilted_series_with_a_missing_slice_stays_on_its_line(exported_bundle, tmp_path):
    """Positions were compared with a line stepped by slice index: a gantry-tilted series (positions
    stepping in-plane with the height) missing one slice was found "off the line" by tenths of a
    millimetre. Only its uneven gaps are a finding: NIfTI output is refused for them, and a DICOM
    SEG places every slice where its source lies."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    fields = write_tilted_series(tmp_path / "ct", 20.0)
    (tmp_path / "ct" / "IM005.dcm").unlink()  # the sixth position of ten
    normal = np.cross(fields["row"], fields["column"])
    gap = float((fields["positions"][1] - fields["positions"][0]) @ normal)
    for path in (tmp_path / "ct").iterdir():  # a DICOM SEG copies it from its source
        ds = pydicom.dcmread(path)
        ds.SliceThickness = f"{gap:.6f}"
        ds.save_as(path)
    volume = read_dicom_series(tmp_path / "ct")
    assert volume.off_line is None
    assert volume.uneven_gaps == pytest.approx((gap, 2 * gap), rel=1e-6)

    def predict(out):
        return GuardedCliRunner().invoke(cli, ["predict", str(exported_bundle), str(tmp_path / "ct"), "--out", str(out),
                                               "--backend", "onnxruntime:fp32", "--quiet"])

    refused = predict(tmp_path / "labels.nii.gz")
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and "are unevenly spaced" in lines[0] and "off the line" not in lines[0], refused.output
    assert not (tmp_path / "labels.nii.gz").exists()
    done = predict(tmp_path / "labels.dcm")
    assert done.exit_code == 0, done.output
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, (tmp_path / "ct").glob("IM*.dcm"))}
    seg = pydicom.dcmread(tmp_path / "labels.dcm")
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx([float(v) for v in sources[uid].ImagePositionPatient], abs=1e-4)


def test_a_seg_of_a_tilted_series_states_the_distance_between_its_planes(exported_bundle, tmp_path):
    """Spacing Between Slices is the distance between adjacent planes along their normal (PS3.3),
    for a tilted series the table step by the cosine of the tilt, not the table step its sources
    state: the oracle is the positions projected on the normal with numpy."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    fields = write_tilted_series(tmp_path / "ct", 30.0, slices=6)
    normal = np.cross(fields["row"], fields["column"])
    gaps = np.diff(fields["positions"] @ normal)
    assert gaps == pytest.approx(np.full(5, TABLE_STEP_MM * np.cos(np.radians(30.0))), abs=1e-9)
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.SliceThickness, ds.SpacingBetweenSlices = f"{gaps[0]:.6f}", f"{TABLE_STEP_MM}"
        ds.save_as(path)
    done = GuardedCliRunner().invoke(cli, ["predict", str(exported_bundle), str(tmp_path / "ct"), "--out",
                                           str(tmp_path / "labels.dcm"), "--backend", "onnxruntime:fp32", "--quiet"])
    assert done.exit_code == 0, done.output
    (measures,) = pydicom.dcmread(tmp_path / "labels.dcm").SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    assert float(measures.SpacingBetweenSlices) == pytest.approx(gaps[0], abs=1e-4)
