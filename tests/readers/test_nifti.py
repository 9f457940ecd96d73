"""NIfTI reader on the real TotalSegmentator sample: orientation, HU, labels, dataset layouts."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from edgeseg.data import read_nifti, read_nifti_dataset
from edgeseg.errors import DataError

LIVER = 5  # TotalSegmentator label of the liver


def test_reoriented_array_is_the_raw_ras_array_flipped_to_lps(totalseg):
    image = nib.load(totalseg / "example_ct_sm.nii.gz")
    # The sample is stored RAS with a positive diagonal affine: index x grows to the patient's
    # right and y to anterior, so LPS display flips both, and (x, y, z) becomes (z, y, x).
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    raw = np.asarray(image.dataobj).astype(np.float32)
    expected = raw[::-1, ::-1, :].transpose(2, 1, 0)

    volume = read_nifti(totalseg / "example_ct_sm.nii.gz")

    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.spacing == (3.0, 3.0, 3.0)
    assert volume.case_id == "example_ct_sm"
    # Index (0, 0, 0) of the LPS array is raw voxel (121, 100, 0): the same world point.
    nx, ny, _ = raw.shape
    np.testing.assert_allclose(volume.affine @ [0, 0, 0, 1], image.affine @ [nx - 1, ny - 1, 0, 1])
    np.testing.assert_allclose(volume.affine @ [5, 7, 2, 1], image.affine @ [nx - 1 - 5, ny - 1 - 7, 2, 1])


def test_liver_label_has_liver_hu_and_sits_on_the_image_left(totalseg):
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz", totalseg / "example_seg.nii.gz")

    assert volume.label.dtype == np.uint8
    liver = volume.label == LIVER
    assert 20 <= float(volume.hu[liver].mean()) <= 70  # published: about 44 HU
    # Patient's right is the image left in LPS display: the liver's mean column is left of centre.
    assert np.argwhere(liver)[:, 2].mean() < volume.hu.shape[2] / 2


def test_label_values_match_the_raw_label_file(totalseg):
    raw = np.asarray(nib.load(totalseg / "example_seg_fast.nii.gz").dataobj)
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz", totalseg / "example_seg_fast.nii.gz")
    np.testing.assert_array_equal(volume.label, raw[::-1, ::-1, :].transpose(2, 1, 0))


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.mark.parametrize(
    ("image_name", "label_name"),
    [
        ("imagesTr/liver_1.nii.gz", "labelsTr/liver_1.nii.gz"),
        ("images/liver_1.nii.gz", "labels/liver_1.nii.gz"),
        ("imagesTr/liver_1_0000.nii.gz", "labelsTr/liver_1.nii.gz"),  # nnU-Net channel suffix
    ],
)
def test_dataset_layouts_pair_images_with_labels(tmp_path, totalseg, image_name, label_name):
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / image_name)
    _copy(totalseg / "example_seg.nii.gz", tmp_path / label_name)
    (tmp_path / image_name).with_name("._liver_1.nii.gz").write_bytes(b"macOS resource fork")

    volumes = read_nifti_dataset(tmp_path)

    assert [v.case_id for v in volumes] == ["liver_1"]
    assert (volumes[0].label == LIVER).sum() > 1000


def test_flat_folder_gives_unlabelled_volumes(tmp_path, totalseg):
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "a.nii.gz")
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "b.nii.gz")
    volumes = read_nifti_dataset(tmp_path)
    assert [(v.case_id, v.label) for v in volumes] == [("a", None), ("b", None)]


def test_truncated_gzip_names_the_file(tmp_path, totalseg):
    data = (totalseg / "example_ct_sm.nii.gz").read_bytes()
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(data[: len(data) // 2])  # header intact, data cut: fails only on decoding
    with pytest.raises(DataError, match=r"broken\.nii\.gz.*truncated"):
        read_nifti(broken)
    broken.write_bytes(data[:100])
    with pytest.raises(DataError, match=r"broken\.nii\.gz"):
        read_nifti(broken)


def test_label_of_another_shape_names_both_shapes(tmp_path, totalseg):
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(DataError, match=r"\(10, 10, 10\).*\(122, 101, 30\)"):
        read_nifti(totalseg / "example_ct_sm.nii.gz", tmp_path / "small.nii.gz")


def test_label_values_beyond_uint8_are_refused(tmp_path, totalseg):
    image = nib.load(totalseg / "example_ct_sm.nii.gz")
    values = np.full(image.shape, 300, dtype=np.int16)
    nib.save(nib.Nifti1Image(values, image.affine), tmp_path / "big.nii.gz")
    with pytest.raises(DataError, match=r"300.*uint8"):
        read_nifti(totalseg / "example_ct_sm.nii.gz", tmp_path / "big.nii.gz")


def _float_label(totalseg, tmp_path, change) -> tuple:
    """example_seg.nii.gz stored as float32 with ``change`` applied to its values."""
    original = nib.load(totalseg / "example_seg.nii.gz")
    values = np.asarray(original.dataobj).astype(np.float32)
    image = nib.Nifti1Image(change(values), original.affine)
    image.set_data_dtype(np.float32)
    nib.save(image, tmp_path / "float.nii.gz")
    return tmp_path / "float.nii.gz", values


def test_float_labels_within_a_thousandth_of_a_label_are_that_label(tmp_path, totalseg):
    """float32 rounding of a resampling tool (0.9999999 for 1, 2.0000002 for 2, -1e-7 for 0) is
    read as the label it rounds to; the labels are those of the integer file."""
    def noisy(values):
        out = values.copy()
        out[values == 0] = np.float32(-1e-7)
        out[values > 0] += np.where(values[values > 0] % 2 == 1, np.float32(-1e-4), np.float32(9e-4))
        return out

    path, values = _float_label(totalseg, tmp_path, noisy)
    assert np.count_nonzero(np.asarray(nib.load(path).dataobj) % 1 != 0) == values.size  # no value is whole
    volume = read_nifti(totalseg / "example_ct_sm.nii.gz", path)
    exact = read_nifti(totalseg / "example_ct_sm.nii.gz", totalseg / "example_seg.nii.gz")
    np.testing.assert_array_equal(volume.label, exact.label)


@pytest.mark.parametrize(("offset", "shown"), [(0.5, "1.5"), (0.002, "1.002")])
def test_float_labels_further_from_a_label_are_refused_naming_a_value(tmp_path, totalseg, offset, shown):
    path, values = _float_label(totalseg, tmp_path, lambda v: np.where(v == 1, np.float32(1 + offset), v))
    count = int(np.count_nonzero(values == 1))
    with pytest.raises(DataError) as caught:
        read_nifti(totalseg / "example_ct_sm.nii.gz", path)
    assert str(caught.value) == (f"label file {path} holds {count} voxel values more than 0.001 from a whole number "
                                 f"(e.g. {shown}); expected a label map (values within 0.001 of an integer are "
                                 "rounded to it)")


def test_image_without_label_in_a_labelled_dataset(tmp_path, totalseg):
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "imagesTr/a.nii.gz")
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "imagesTr/b.nii.gz")
    _copy(totalseg / "example_seg.nii.gz", tmp_path / "labelsTr/a.nii.gz")
    with pytest.raises(DataError, match=r"b\.nii\.gz has no label"):
        read_nifti_dataset(tmp_path)


@pytest.mark.parametrize("image_name", ["a.nii.gz", "a_0000.nii.gz"])
def test_label_without_its_image_in_a_labelled_dataset(tmp_path, totalseg, image_name):
    """Case b's image is missing: the dataset was read as case a alone, and b left out unseen."""
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "imagesTr" / image_name)
    _copy(totalseg / "example_seg.nii.gz", tmp_path / "labelsTr/a.nii.gz")
    _copy(totalseg / "example_seg.nii.gz", tmp_path / "labelsTr/b.nii.gz")
    with pytest.raises(DataError, match=r"label .*labelsTr/b\.nii\.gz has no image in .*imagesTr \(expected "
                                        r"b\.nii\.gz or b_0000\.nii\.gz\)"):
        read_nifti_dataset(tmp_path)


def test_a_second_nnunet_channel_is_named_as_such(tmp_path, totalseg):
    """An nnU-Net dataset of two channels (CT and another): the _0001 image was refused as an
    image without a label, which sends the user looking for a missing file."""
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "imagesTr" / "a_0000.nii.gz")
    _copy(totalseg / "example_ct_sm.nii.gz", tmp_path / "imagesTr" / "a_0001.nii.gz")
    _copy(totalseg / "example_seg.nii.gz", tmp_path / "labelsTr/a.nii.gz")
    with pytest.raises(DataError, match=r"a_0001\.nii\.gz is a second input channel of an nnU-Net case \(suffix "
                                        r"_0001\); edgeseg segments one CT channel \(_0000\)"):
        read_nifti_dataset(tmp_path)
    (tmp_path / "imagesTr" / "a_0001.nii.gz").unlink()  # the CT channel alone reads
    assert len(read_nifti_dataset(tmp_path)) == 1


def test_a_header_putting_the_voxels_far_into_a_gzip_stream_is_refused_unread(tmp_path):
    """A .nii.gz of a few kilobytes whose vox_offset is 1 GiB: reading it inflated the whole GiB
    of zeros to reach two slices (seconds of CPU a request behind /v1/segment); it is refused
    from its header, and a header with an ordinary offset still reads."""
    import gzip
    import time

    hu = np.full((8, 8, 2), -1000, np.int16)
    header = nib.Nifti1Header()
    header.set_data_shape(hu.shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 1 << 30
    far = tmp_path / "far.nii.gz"
    with gzip.open(far, "wb", compresslevel=1) as stream:  # the voxels do sit 1 GiB in
        stream.write(header.binaryblock)
        zeros, left = bytes(1 << 24), (1 << 30) - len(header.binaryblock)
        while left:
            stream.write(zeros[:min(left, len(zeros))])
            left -= min(left, len(zeros))
        stream.write(hu.tobytes(order="F"))
    assert far.stat().st_size < 8 << 20  # within an upload's default body limit (64 MB)
    started = time.perf_counter()
    with pytest.raises(DataError, match=r"far.nii.gz: header field vox_offset puts the voxels 1073741824 bytes in"):
        read_nifti(far)
    assert time.perf_counter() - started < 60  # a refusal from the header (a bound for a hang, not a timing)
    near = tmp_path / "near.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), near)
    assert read_nifti(near).hu.shape == (2, 8, 8)


def test_a_scl_slope_that_overflows_float32_hu_is_refused(tmp_path):
    """nibabel scales int16 by 1e38 into finite float64; held as float32 HU they were +-inf, and
    `data info` printed an HU range of -inf..inf instead of refusing the file."""
    path = tmp_path / "huge_slope.nii"
    image = nib.Nifti1Image(np.array([0, 1, 2, 3, 4, -4, 100, -100], np.int16).reshape(2, 2, 2), np.eye(4))
    image.header["scl_slope"], image.header["scl_inter"] = 1e38, 0.0
    nib.save(image, path)
    with np.errstate(over="ignore"):  # the overflow is the point: the oracle counts it
        assert np.isinf(np.asanyarray(nib.load(path).dataobj).astype(np.float32)).sum() == 4
    with pytest.raises(DataError, match=r"huge_slope.nii: 4 voxel values are beyond float32 .*scl_slope"):
        read_nifti(path)


def test_a_file_without_qform_or_sform_is_refused_not_oriented_by_a_guess(tmp_path):
    """With both codes 0 nibabel falls back to x flipped (LAS): an image stored LPS reached the
    model upside down, and its labels were written back with a qform claiming that guess."""
    path = tmp_path / "no_transform.nii.gz"
    image = nib.Nifti1Image(np.zeros((4, 5, 3), np.int16), None)
    nib.save(image, path)
    header = nib.load(path).header
    assert (int(header["qform_code"]), int(header["sform_code"])) == (0, 0)  # what the case is
    with pytest.raises(DataError, match=r"no_transform.nii.gz: header fields qform_code and sform_code are both 0"):
        read_nifti(path)
