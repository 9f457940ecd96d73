"""Slice-folder reader on real MSD liver slices: case grouping, masks, intensity declarations."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from edgeseg.data import read_slice_folder
from edgeseg.errors import DataError


def _channel0(path):
    return np.asarray(Image.open(path))[..., 0]


def _by_case(volumes):
    return {v.case_id: v for v in volumes}


def test_flipped_and_mirrored_copies_share_a_case(msd_slices):
    cases = _by_case(read_slice_folder(msd_slices))

    assert sorted(cases) == ["10001", "10004", "10006"]
    # Sorted by slice number, then name; both copies of slice 100 belong to volume 10004.
    assert cases["10004"].slice_ids == ["flipped_10004_100", "mirrored_10004_100", "mirrored_10004_121"]
    assert cases["10001"].slice_ids == ["mirrored_10001_95", "flipped_10001_103"]
    assert cases["10006"].hu.shape == (3, 256, 256)
    assert not cases["10006"].contiguous  # a stack of unrelated slices, not a scan
    # The two copies really are one slice: an up-down flip turned by 180 degrees is the
    # left-right mirror, up to JPEG noise, while another slice of the case differs widely.
    flipped, mirrored, other = cases["10004"].hu
    assert np.abs(flipped[::-1, ::-1] - mirrored).mean() < 1.0
    assert np.abs(other - mirrored).mean() > 10.0


def test_masks_are_binarised_channel_0(msd_slices):
    volume = _by_case(read_slice_folder(msd_slices))["10001"]
    raw = _channel0(msd_slices / "masks" / "mirrored_10001_95.jpg")

    assert volume.label.dtype == np.uint8
    assert set(np.unique(volume.label)) == {0, 1}
    np.testing.assert_array_equal(volume.label[0], (raw > 127).astype(np.uint8))
    # JPEG noise sits between 0 and 255; a lower threshold picks some of it up.
    low = _by_case(read_slice_folder(msd_slices, mask_threshold=10))["10001"]
    assert low.label[0].sum() > volume.label[0].sum()


def test_hu_clipped_keeps_pixel_values(msd_slices):
    volume = _by_case(read_slice_folder(msd_slices, intensity="hu-clipped:0,255"))["10006"]
    raw = _channel0(msd_slices / "images" / "mirrored_10006_77.jpg")
    np.testing.assert_array_equal(volume.hu[0], raw.astype(np.float32))
    assert volume.hu_range == (0.0, 255.0)
    assert volume.spacing == (1.0, 1.0, 1.0)


def test_window_maps_0_255_onto_the_hu_window(msd_slices):
    volume = _by_case(read_slice_folder(msd_slices, intensity="window:-100,400"))["10006"]
    raw = _channel0(msd_slices / "images" / "mirrored_10006_77.jpg").astype(np.float64)
    np.testing.assert_allclose(volume.hu[0], -100 + raw / 255 * 500, atol=1e-3)
    assert volume.hu_range == (-100.0, 400.0)


def test_hu_clipped_range_narrower_than_the_pixels_is_refused(msd_slices):
    with pytest.raises(DataError, match=r"outside the declared hu-clipped range 0\.\.100"):
        read_slice_folder(msd_slices, intensity="hu-clipped:0,100")


@pytest.mark.parametrize("text", ["window", "window:5", "window:200,100", "hu:0,255"])
def test_bad_intensity_declarations(msd_slices, text):
    with pytest.raises(DataError, match="intensity"):
        read_slice_folder(msd_slices, intensity=text)


@pytest.fixture
def slice_copy(tmp_path, msd_slices):
    return shutil.copytree(msd_slices, tmp_path / "slices")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        read_slice_folder(tmp_path / "nowhere")


def test_empty_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no images found"):
        read_slice_folder(tmp_path)


def test_image_without_mask(slice_copy):
    (slice_copy / "masks" / "flipped_10006_80.jpg").unlink()
    with pytest.raises(DataError, match=r"flipped_10006_80\.jpg has no mask"):
        read_slice_folder(slice_copy)


def test_mask_without_image(slice_copy):
    """The slice whose image is missing dropped out of the data unseen."""
    (slice_copy / "images" / "flipped_10006_80.jpg").unlink()
    with pytest.raises(DataError, match=r"mask .*flipped_10006_80\.jpg has no image of the same name"):
        read_slice_folder(slice_copy)


def test_mask_of_another_size(slice_copy):
    mask = slice_copy / "masks" / "flipped_10006_80.jpg"
    Image.open(mask).resize((128, 128)).save(mask)
    with pytest.raises(DataError, match=r"flipped_10006_80\.jpg is \(128, 128\).*\(256, 256\)"):
        read_slice_folder(slice_copy)


def test_slices_of_different_sizes_in_one_case(slice_copy):
    for folder in ("images", "masks"):
        path = slice_copy / folder / "flipped_10006_80.jpg"
        Image.open(path).resize((200, 200)).save(path)
    with pytest.raises(DataError, match=r"flipped_10006_80\.jpg is \(200, 200\).*case 10006"):
        read_slice_folder(slice_copy)


def test_unreadable_and_truncated_images(slice_copy):
    image = slice_copy / "images" / "flipped_10006_80.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=r"cannot read image .*flipped_10006_80\.jpg"):
        read_slice_folder(slice_copy)
    image.write_bytes(b"not a picture")
    with pytest.raises(DataError, match=r"cannot read image .*flipped_10006_80\.jpg"):
        read_slice_folder(slice_copy)


def test_file_name_outside_the_case_pattern(slice_copy):
    for folder in ("images", "masks"):
        (slice_copy / folder / "flipped_10006_80.jpg").rename(slice_copy / folder / "scan.jpg")
    with pytest.raises(DataError, match=r"scan\.jpg does not match the case pattern"):
        read_slice_folder(slice_copy)


def test_custom_case_pattern(slice_copy):
    # Keeping the prefix in the case id splits the copies apart, which is what the default avoids.
    volumes = read_slice_folder(slice_copy, case_pattern=r"(?P<case>.+)_(?P<slice>\d+)$")
    assert "flipped_10004" in _by_case(volumes) and "mirrored_10004" in _by_case(volumes)
    with pytest.raises(DataError, match="named groups"):
        read_slice_folder(slice_copy, case_pattern=r"(?P<case>.+)_\d+$")


def test_a_colour_mask_is_refused_not_read_as_its_red_channel(slice_copy):
    """Only channel 0 is read: a liver drawn in green was background, with no word said."""
    jpg = slice_copy / "masks" / "flipped_10006_80.jpg"
    grey = np.asarray(Image.open(jpg))[..., 0] > 127
    assert grey.any()  # the real mask has liver to lose
    green = np.zeros((*grey.shape, 3), np.uint8)
    green[grey] = (0, 255, 0)
    jpg.unlink()
    Image.fromarray(green).save(slice_copy / "masks" / "flipped_10006_80.png")
    with pytest.raises(DataError, match=r"mask .*flipped_10006_80\.png is a colour image \(row \d+, column \d+ "
                                        r"is RGB \(0, 255, 0\)\)"):
        read_slice_folder(slice_copy)


def test_a_colour_image_is_refused_and_grey_stored_as_rgb_is_read(slice_copy):
    image = slice_copy / "images" / "flipped_10006_80.jpg"
    rgb = np.asarray(Image.open(image)).copy()
    assert rgb.ndim == 3 and (rgb == rgb[..., :1]).all()  # the real slices: grey stored as RGB
    volume = next(v for v in read_slice_folder(slice_copy) if v.case_id == "10006")
    np.testing.assert_array_equal(volume.hu[volume.slice_ids.index("flipped_10006_80")], rgb[..., 0])
    rgb[100:110, 100:110] = (255, 0, 0)  # an annotation burned in red
    image.unlink()
    Image.fromarray(rgb).save(image.with_suffix(".png"))
    with pytest.raises(DataError, match=r"image .*flipped_10006_80\.png is a colour image .*RGB \(255, 0, 0\)"):
        read_slice_folder(slice_copy)
