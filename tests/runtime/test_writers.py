"""The label writers used as a library: what they are given is either written exactly (read back
and compared) or refused with one DataError and no file; never stored as other classes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.volume import Volume, default_affine
from edgeseg.errors import DataError
from edgeseg.runtime.writers import write_nifti, write_npy, write_overlay, write_png

SPACING = (2.0, 0.5, 0.75)


def _volume(shape=(3, 20, 30), spacing=SPACING, affine=None) -> Volume:
    hu = np.linspace(-1000, 400, num=int(np.prod(shape)), dtype=np.float32).reshape(shape)
    return Volume(hu=hu, spacing=spacing, affine=default_affine(spacing) if affine is None else affine, case_id="c")


def _labels(dtype=np.uint8, shape=(3, 20, 30)) -> np.ndarray:
    labels = np.zeros(shape, dtype=dtype)
    labels[:, 4:12, 5:20] = 1
    labels[1, 14:18, 2:9] = 2
    return labels


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.uint16, np.float32, bool])
def test_nifti_holds_the_classes_given_in_any_whole_number_dtype(tmp_path, dtype):
    nib = pytest.importorskip("nibabel")
    labels = _labels(dtype)
    out = write_nifti(labels, _volume(), tmp_path / "mask.nii.gz")
    image = nib.load(str(out))
    assert image.get_data_dtype() == np.uint8
    # the file is (x, y, z); the labels (z, y, x)
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), labels.astype(np.uint8))
    np.testing.assert_allclose(image.header.get_zooms(), SPACING[::-1])


@pytest.mark.parametrize(("value", "dtype"), [(300, np.int64), (-1, np.int16), (1.5, np.float32), (np.nan, np.float64)])
def test_nifti_refuses_labels_a_uint8_file_would_change(tmp_path, value, dtype):
    labels = _labels(dtype)
    labels[0, 0, 0] = value  # 300 was stored as 44, -1 as 255, 1.5 as 1
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(DataError, match=r"labels must be class numbers 0\.\.255"):
        write_nifti(labels, _volume(), out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spacing", [(0.0, 0.5, 0.75), (2.0, np.nan, 0.75)], ids=["zero", "nan"])
def test_nifti_refuses_an_affine_no_viewer_can_place(tmp_path, spacing):
    out = tmp_path / "mask.nii.gz"
    with pytest.raises(DataError, match="affine must be a finite 4x4 matrix with non-zero voxel sizes"):
        write_nifti(_labels(), _volume(spacing=spacing), out)
    assert list(tmp_path.iterdir()) == []


def test_nifti_keeps_a_sheared_affine_as_given(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = default_affine(SPACING)
    affine[0, 1] = 0.3  # a gantry-tilt-like shear: not orthogonal, still invertible
    out = write_nifti(_labels(), _volume(affine=affine), tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(nib.load(str(out)).affine, affine)


@pytest.mark.parametrize("shape", [(3, 5, 30), (2, 20, 30)], ids=["fewer-rows", "fewer-slices"])
@pytest.mark.parametrize("writer", [write_png, write_overlay])
def test_png_outputs_refuse_labels_of_another_shape_than_the_volume(tmp_path, writer, shape):
    pytest.importorskip("PIL")
    out = tmp_path / ("mask.png" if writer is write_overlay else "masks")
    with pytest.raises(DataError, match=r"labels of shape \[.*\] do not match the volume's \[3, 20, 30\]"):
        writer(_labels(shape=shape), _volume(), out)
    assert list(tmp_path.iterdir()) == []


def test_npy_onto_a_folder_is_one_data_error(tmp_path):
    """It raised IsADirectoryError from the rename, after the labels were written beside it."""
    folder = tmp_path / "labels.npy"
    folder.mkdir()
    with pytest.raises(DataError, match="npy output .*labels.npy is a folder; name a file"):
        write_npy(_labels(), folder)
    assert list(tmp_path.iterdir()) == [folder] and list(folder.iterdir()) == []


def test_nifti_of_a_2d_nifti_input_lies_on_its_grid(tmp_path):
    """A 2-D NIfTI is read as one slice; its labels were refused at writing, after inference, as
    not fitting the grid (64, 48) they came from."""
    nib = pytest.importorskip("nibabel")
    from edgeseg.data.nifti import read_nifti

    affine = np.diag([0.7, 0.8, 2.0, 1.0])  # RAS: read into LPS by flipping x and y
    source = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 48), np.int16), affine), source)
    volume = read_nifti(source)
    labels = np.zeros((1, 48, 64), np.uint8)
    labels[0, 5, 3] = 2  # LPS row 5, column 3
    image = nib.load(str(write_nifti(labels, volume, tmp_path / "mask.nii.gz")))
    expected = np.zeros((64, 48), np.uint8)
    expected[64 - 1 - 3, 48 - 1 - 5] = 2  # the same voxel in the file's own RAS (x, y) order
    assert image.shape == (64, 48)
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected)
    np.testing.assert_allclose(image.affine, affine)


def test_nifti_of_a_sheared_nifti_input_carries_its_qform_sform_codes_and_units(tmp_path):
    """A gantry-tilted scan's sform holds a shear its qform cannot (a qform is a rotation). The
    output took the sform as its qform too (nibabel stores the nearest rotation, so the qform
    placed the labels elsewhere than the input's qform did) and set both codes to 1 (scanner),
    relabelling an "aligned" sform."""
    nib = pytest.importorskip("nibabel")
    from edgeseg.data.nifti import read_nifti

    qform = np.array([[-0.8, 0, 0, 100], [0, -0.8, 0, 120], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    sform = qform.copy()
    sform[0, 2] = 0.6  # each slice slides 0.6 mm along x: the tilt
    source = tmp_path / "tilted.nii.gz"
    image = nib.Nifti1Image(np.zeros((32, 24, 5), np.int16), None)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, source)
    volume = read_nifti(source)
    labels = np.zeros(volume.hu.shape, np.uint8)
    labels[1, 3, 4] = 1
    out = nib.load(str(write_nifti(labels, volume, tmp_path / "mask.nii.gz")))
    written, given = out.header, nib.load(str(source)).header
    assert written.get_qform(coded=True)[1] == 1 and written.get_sform(coded=True)[1] == 2
    np.testing.assert_allclose(written.get_qform(), given.get_qform(), atol=1e-6)
    np.testing.assert_allclose(written.get_qform(), qform, atol=1e-6)
    np.testing.assert_allclose(written.get_sform(), sform, atol=1e-6)
    assert written.get_xyzt_units() == ("mm", "sec")
    # the labelled voxel lies, by the written sform, where the volume's affine puts label [1, 3, 4]
    (voxel,) = np.argwhere(np.asarray(out.dataobj) == 1)
    assert out.shape == (32, 24, 5)
    np.testing.assert_allclose(nib.affines.apply_affine(written.get_sform(), voxel),
                               nib.affines.apply_affine(volume.affine, (4, 3, 1)))
