"""Label files (NRRD, DICOM SEG, NIfTI) on the real samples, checked against hand-made oracles."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from edgeseg.data import open_dataset, read_dicom_series_with_refs, read_nifti
from edgeseg.data.labels import read_label_file
from edgeseg.errors import DataError, MissingDependencyError

LIVER_TOTALSEG = 5
OTHER_SERIES = "1.2.826.0.1.3680043.8.498.12345"
DCMQI = Path(__file__).resolve().parents[1] / "data" / "dcmqi_ct_liver"


@pytest.fixture(scope="module")
def ct():
    """The dcmqi CT series and its references, read once: tests only read them."""
    return read_dicom_series_with_refs(DCMQI / "ct-3slice")


@pytest.fixture(scope="module")
def nrrd_oracle():
    """The liver mask by hand: NRRD axes are (column, row, z ascending); the CT's pixel rows and
    columns already run posterior and left (ImageOrientationPatient 1,0,0,0,1,0), so LPS
    (z, y, x) is a plain transpose with no flips."""
    mask, _ = nrrd.read(str(DCMQI / "liver_seg.nrrd"))
    return np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8)


def test_nrrd_gives_the_hand_transposed_mask(ct, dcmqi, nrrd_oracle):
    volume, _ = ct
    label = read_label_file(dcmqi / "liver_seg.nrrd", volume)
    assert label.dtype == np.uint8 and label.shape == volume.hu.shape
    np.testing.assert_array_equal(label, nrrd_oracle)
    assert (label == 1).sum() == 107098
    assert 30 <= float(volume.hu[label == 1].mean()) <= 60  # liver, not air or bone


def _rewritten_nrrds(mask_xyz, header):
    """The same mask stored three other ways, each header worked out by hand."""
    spacing = np.diag(header["space directions"])
    origin = np.asarray(header["space origin"], dtype=float)
    rows = mask_xyz.shape[1]
    # 1. RAS world space, rows stored anterior-first: flip axis 1, negate x and y of everything.
    ras_origin = [-origin[0], -(origin[1] + (rows - 1) * spacing[1]), origin[2]]
    ras = (mask_xyz[:, ::-1, :], {"space": "right-anterior-superior",
                                  "space directions": np.diag([-spacing[0], spacing[1], spacing[2]]),
                                  "space origin": np.asarray(ras_origin)})
    # 2. Axes stored (z, row, column): one direction per axis, so the rows swap with the data.
    zyx = (mask_xyz.transpose(2, 1, 0), {"space": "left-posterior-superior",
                                         "space directions": np.diag(spacing)[::-1],
                                         "space origin": origin})
    # 3. A leading non-spatial axis of length 1, as segmentation editors write layers.
    directions = np.vstack([np.full(3, np.nan), np.diag(spacing)])
    layered = (mask_xyz[np.newaxis], {"space": "left-posterior-superior", "space directions": directions,
                                      "space origin": origin, "kinds": ["list", "domain", "domain", "domain"]})
    return {"ras_rows_reversed": ras, "axes_zyx": zyx, "layered": layered}


@pytest.mark.parametrize("variant", ["ras_rows_reversed", "axes_zyx", "layered"])
def test_nrrd_in_another_space_or_axis_order_lands_on_the_same_voxels(tmp_path, ct, dcmqi, nrrd_oracle, variant):
    mask, header = nrrd.read(str(dcmqi / "liver_seg.nrrd"))
    data, new_header = _rewritten_nrrds(mask, header)[variant]
    nrrd.write(str(tmp_path / "liver.nrrd"), np.ascontiguousarray(data), new_header)
    np.testing.assert_array_equal(read_label_file(tmp_path / "liver.nrrd", ct[0]), nrrd_oracle)


def test_nrrd_off_the_grid_is_refused(tmp_path, ct, dcmqi):
    mask, header = nrrd.read(str(dcmqi / "liver_seg.nrrd"))
    header["space origin"] = np.asarray(header["space origin"]) + [0.0, 0.0, 5.0]
    nrrd.write(str(tmp_path / "shifted.nrrd"), mask, header)
    with pytest.raises(DataError, match=r"shifted\.nrrd does not lie on the grid of ct-3slice: .*up to 5 mm"):
        read_label_file(tmp_path / "shifted.nrrd", ct[0])


def test_seg_gives_exactly_the_nrrd_mask(ct, dcmqi, nrrd_oracle):
    volume, refs = ct
    label = read_label_file(dcmqi / "liver.dcm", volume, refs)
    # Both files were exported by dcmqi from one label map: the same voxels, not just similar.
    np.testing.assert_array_equal(label, nrrd_oracle)


def _stored_hu(path):
    ds = pydicom.dcmread(path)
    return (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)


def test_from_source_layout_maps_a_sagittal_stack_to_lps(tmp_path, dcmqi):
    # Relabel the three slices as sagittal: columns run posterior, rows inferior, and file 0k
    # lies k mm to the patient's right. Source (column, row, slice) -> LPS (y, z, x) is a
    # 3-cycle, so a transform applied the wrong way round cannot pass for its inverse.
    folder = shutil.copytree(dcmqi / "ct-3slice", tmp_path / "sagittal")
    for k, path in enumerate(sorted(folder.glob("*.dcm")), start=1):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-float(k), -226.8, 100.0]
        ds.save_as(path)
    volume, refs = read_dicom_series_with_refs(folder)

    # By hand: x runs right to left (03, 02, 01), y along the columns, z up the reversed rows.
    by_x = np.stack([_stored_hu(folder / name) for name in ("03.dcm", "02.dcm", "01.dcm")])
    expected = by_x[:, ::-1, :].transpose(1, 2, 0)
    np.testing.assert_array_equal(volume.hu, expected)
    stack = np.stack([_stored_hu(path) for path in refs.files])  # in the reader's stack order
    np.testing.assert_array_equal(refs.from_source_layout(stack), expected)
    np.testing.assert_array_equal(refs.to_source_layout(expected), stack)


def test_nifti_label_lands_on_liver_hu(totalseg):
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz")
    label = read_label_file(totalseg / "example_seg.nii.gz", volume)
    raw = np.asarray(nib.load(totalseg / "example_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(label, raw[::-1, ::-1, :].transpose(2, 1, 0))  # RAS -> LPS by hand
    assert 20 <= float(volume.hu[label == LIVER_TOTALSEG].mean()) <= 70


def test_nifti_label_of_another_shape_names_both_shapes(tmp_path, totalseg):
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz")
    image = nib.load(totalseg / "example_ct_sm.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((122, 101, 29), np.uint8), image.affine), tmp_path / "short.nii.gz")
    with pytest.raises(DataError, match=r"short\.nii\.gz has shape \(29, 101, 122\).*\(30, 101, 122\)"):
        read_label_file(tmp_path / "short.nii.gz", volume)


def _edited_seg(dcmqi, tmp_path, change):
    ds = pydicom.dcmread(dcmqi / "liver.dcm")
    change(ds)
    ds.save_as(tmp_path / "edited.dcm")
    return tmp_path / "edited.dcm"


def test_seg_of_another_series_is_refused(tmp_path, ct, dcmqi):
    def other_series(ds):
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID = OTHER_SERIES

    seg = _edited_seg(dcmqi, tmp_path, other_series)
    with pytest.raises(DataError, match=rf"SEG .*edited\.dcm does not reference series .*references {OTHER_SERIES}"):
        read_label_file(seg, *ct)


def test_seg_frame_off_its_slice_is_refused(tmp_path, ct, dcmqi):
    def shift_first_frame(ds):
        position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        position.ImagePositionPatient = [float(v) + d for v, d in zip(position.ImagePositionPatient, (0, 0, 5))]

    seg = _edited_seg(dcmqi, tmp_path, shift_first_frame)
    with pytest.raises(DataError, match=r"frame 1 has ImagePositionPatient .* not on this series' grid"):
        read_label_file(seg, *ct)


def test_seg_without_series_refs_is_refused(dcmqi, totalseg):
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz")
    with pytest.raises(DataError, match=r"liver\.dcm needs the CT series' references"):
        read_label_file(dcmqi / "liver.dcm", volume)


def test_a_dicom_image_is_not_a_label_file(ct, dcmqi):
    with pytest.raises(DataError, match=r"01\.dcm is DICOM but not a DICOM SEG"):
        read_label_file(dcmqi / "ct-3slice" / "01.dcm", *ct)


@pytest.mark.parametrize(("module", "name", "extra"), [("highdicom", "liver.dcm", "dicom")])
def test_missing_optional_reader_names_its_extra(monkeypatch, ct, dcmqi, module, name, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf"edgeseg\[{extra}\]"):
        read_label_file(dcmqi / name, *ct)


def test_open_dataset_with_label_file(dcmqi, totalseg, nrrd_oracle):
    [dicom] = open_dataset(dcmqi / "ct-3slice", label_file=dcmqi / "liver_seg.nrrd")
    np.testing.assert_array_equal(dicom.label, nrrd_oracle)
    [dicom_seg] = open_dataset(dcmqi / "ct-3slice", label_file=dcmqi / "liver.dcm")
    np.testing.assert_array_equal(dicom_seg.label, nrrd_oracle)
    [nifti] = open_dataset(totalseg / "example_ct_sm.nii.gz", label_file=totalseg / "example_seg.nii.gz")
    assert 20 <= float(nifti.hu[nifti.label == LIVER_TOTALSEG].mean()) <= 70


def test_label_file_for_several_volumes_is_refused(tmp_path, dcmqi, msd_slices):
    for name in ("patient_a", "patient_b"):
        shutil.copytree(dcmqi / "ct-3slice", tmp_path / name)
    label = dcmqi / "liver_seg.nrrd"
    with pytest.raises(DataError, match=r"needs a source with one volume; .* holds 2 series folders"):
        open_dataset(tmp_path, label_file=label)
    with pytest.raises(DataError, match=r"needs a source with one volume .*msd_liver_slices is a slices folder"):
        open_dataset(msd_slices, label_file=label)
    with pytest.raises(DataError, match=r"needs a source with one volume; 'phantom'"):
        open_dataset("phantom", label_file=label)


def _series_with_seg(dcmqi, folder):
    shutil.copytree(dcmqi / "ct-3slice", folder)
    shutil.copyfile(dcmqi / "liver.dcm", folder / "liver.dcm")
    return folder


def test_seg_beside_the_slices_becomes_the_label(tmp_path, dcmqi, nrrd_oracle):
    folder = _series_with_seg(dcmqi, tmp_path / "case_1")
    [volume] = open_dataset(folder)
    assert volume.case_id == "case_1" and volume.num_slices == 3
    np.testing.assert_array_equal(volume.label, nrrd_oracle)
    with pytest.raises(DataError, match=r"already has a label map .*liver_seg\.nrrd would be a second"):
        open_dataset(folder, label_file=dcmqi / "liver_seg.nrrd")
    shutil.copyfile(dcmqi / "liver.dcm", folder / "liver_copy.dcm")
    with pytest.raises(DataError, match=r"2 DICOM SEG files label series .*keep one"):
        open_dataset(folder)


def test_seg_folders_in_a_tree_label_the_series_they_reference(tmp_path, dcmqi, nrrd_oracle):
    shutil.copytree(dcmqi / "ct-3slice", tmp_path / "ct")
    (tmp_path / "seg").mkdir()
    shutil.copyfile(dcmqi / "liver.dcm", tmp_path / "seg" / "liver.dcm")
    [volume] = open_dataset(tmp_path)
    assert volume.case_id == "ct"
    np.testing.assert_array_equal(volume.label, nrrd_oracle)

    ds = pydicom.dcmread(tmp_path / "seg" / "liver.dcm")
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = OTHER_SERIES
    ds.save_as(tmp_path / "seg" / "liver.dcm")
    with pytest.raises(DataError, match=rf"does not reference series of any subfolder .*{OTHER_SERIES}"):
        open_dataset(tmp_path)


def test_non_ct_series_beside_a_seg_is_still_refused(tmp_path, dcmqi):
    folder = _series_with_seg(dcmqi, tmp_path / "mr")
    for path in sorted(folder.glob("0*.dcm")):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    with pytest.raises(DataError, match="is MR, not CT"):
        open_dataset(folder)


def test_a_folder_of_segs_alone_says_so(tmp_path, dcmqi):
    (tmp_path / "segs").mkdir()
    shutil.copyfile(dcmqi / "liver.dcm", tmp_path / "segs" / "liver.dcm")
    with pytest.raises(DataError, match=r"holds only DICOM SEG files \(liver\.dcm\)"):
        open_dataset(tmp_path / "segs")
