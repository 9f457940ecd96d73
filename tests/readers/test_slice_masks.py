"""Slice-folder masks: binary 0/255 and label maps (grey or greyscale palette), detected or forced,
and the bad inputs each refused in one line. All data is drawn here (synthetic)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgeseg.data import read_slice_folder
from edgeseg.data.slice_masks import LABEL_MAP_MAX, detect_mask_kind
from edgeseg.data.slices import read_slice_folder_with_kind
from edgeseg.errors import DataError


def _label_map(rows: int, cols: int, seed: int) -> np.ndarray:
    """A 0/1/2 map: two rectangles of random place, class 2 inside class 1's neighbour."""
    rng = np.random.default_rng(seed)
    label = np.zeros((rows, cols), np.uint8)
    r, c = rng.integers(0, rows // 2), rng.integers(0, cols // 2)
    label[r:r + rows // 3, c:c + cols // 3] = 1
    label[rows // 2:rows // 2 + 4, cols // 2:cols // 2 + 5] = 2
    return label


def _write_folder(root, labels: dict[str, np.ndarray], encode) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, label in labels.items():
        image = (np.arange(label.size).reshape(label.shape) % 251).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        encode(label).save(root / "masks" / f"{stem}.png")


def _grey_palette_image(label: np.ndarray, greys=None) -> Image.Image:
    image = Image.fromarray(label, mode="P")
    palette = []
    for index in range(256):
        grey = index if greys is None else greys.get(index, index)
        palette += list(grey) if isinstance(grey, tuple) else [grey] * 3
    image.putpalette(palette)
    return image


@pytest.fixture
def labels():
    # Different sizes and aspect ratios, as chest crops are.
    return {"001": _label_map(40, 56, 1), "002": _label_map(33, 21, 2), "003": np.zeros((30, 30), np.uint8)}


def test_grey_label_maps_are_detected_and_kept(tmp_path, labels):
    _write_folder(tmp_path, labels, Image.fromarray)
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "labels"
    by_id = {v.case_id: v for v in volumes}
    assert sorted(by_id) == ["001", "002", "003"]
    for stem, label in labels.items():
        np.testing.assert_array_equal(by_id[stem].label[0], label)


def test_binary_masks_are_detected_and_thresholded(tmp_path, labels):
    _write_folder(tmp_path, labels, lambda label: Image.fromarray(((label > 0) * 255).astype(np.uint8)))
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "binary"
    for volume in volumes:
        np.testing.assert_array_equal(volume.label[0], (labels[volume.case_id] > 0).astype(np.uint8))


def test_greyscale_palette_maps_indices_through_the_palette(tmp_path, labels):
    # Index 1 shows as grey 2 and index 2 as grey 1: the palette, not the index, is the class.
    _write_folder(tmp_path, labels, lambda label: _grey_palette_image(label, {1: 2, 2: 1}))
    volumes = read_slice_folder(tmp_path, case_pattern="file", mask="labels")
    swap = np.array([0, 2, 1], np.uint8)
    for volume in volumes:
        np.testing.assert_array_equal(volume.label[0], swap[labels[volume.case_id]])


def test_forcing_binary_on_a_label_map_thresholds_it(tmp_path, labels):
    _write_folder(tmp_path, labels, Image.fromarray)
    volumes = read_slice_folder(tmp_path, case_pattern="file", mask="binary", mask_threshold=1)
    by_id = {v.case_id: v for v in volumes}
    np.testing.assert_array_equal(by_id["001"].label[0], (labels["001"] > 1).astype(np.uint8))


def test_detection_rule_on_values():
    assert detect_mask_kind([0, 1, 2]) == "labels"
    assert detect_mask_kind([0, LABEL_MAP_MAX]) == "labels"
    assert detect_mask_kind([0, 3, 200, 255], lossy=True) == "binary"  # JPEG noise around 0 and 255
    assert detect_mask_kind([0, 255]) == detect_mask_kind([0, 65535]) == "binary"
    assert detect_mask_kind([0, 3, 200, 255]) == "ambiguous"  # lossless: these values are meant
    assert detect_mask_kind([0, 150, 300]) == detect_mask_kind([0, 128, 255]) == "ambiguous"
    assert detect_mask_kind([0]) == "labels"


def _grey16(label: np.ndarray, levels=(0, 150, 300)) -> Image.Image:
    return Image.fromarray(np.asarray(levels, dtype=np.uint16)[label])


@pytest.mark.parametrize("encode, values", [
    (_grey16, "150, 300"),
    (lambda label: Image.fromarray(np.asarray([0, 128, 255], np.uint8)[label]), "128, 255"),
])
def test_two_grey_levels_above_the_label_range_are_refused_not_merged(tmp_path, labels, encode, values,
                                                                     assert_one_line_error):
    _write_folder(tmp_path, labels, encode)
    with pytest.raises(DataError, match=f"non-zero values {values} .*--mask binary.*--mask labels"):
        read_slice_folder(tmp_path, case_pattern="file")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(tmp_path), "--case-pattern", "file",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, f"masks hold the non-zero values {values}")


def test_a_16_bit_mask_with_one_foreground_value_is_binary_and_forcing_binary_merges(tmp_path, labels):
    _write_folder(tmp_path, labels, lambda label: _grey16(label, (0, 300, 300)))
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "binary"
    assert all(np.array_equal(v.label[0], (labels[v.case_id] > 0).astype(np.uint8)) for v in volumes)
    shutil.rmtree(tmp_path / "masks")
    (tmp_path / "masks").mkdir()
    for stem, label in labels.items():
        _grey16(label).save(tmp_path / "masks" / f"{stem}.png")
    merged = read_slice_folder(tmp_path, case_pattern="file", mask="binary")
    assert all(np.array_equal(v.label[0], (labels[v.case_id] > 0).astype(np.uint8)) for v in merged)


def test_a_value_not_in_the_labels_is_named_with_its_file(tmp_path, labels):
    _write_folder(tmp_path, labels, Image.fromarray)
    with pytest.raises(DataError, match=r"masks/001\.png holds label value 2, which --labels does not map"):
        read_slice_folder(tmp_path, case_pattern="file", label_values=[1])
    assert len(read_slice_folder(tmp_path, case_pattern="file", label_values=[1, 2])) == 3


def test_a_colour_palette_is_refused(tmp_path, labels):
    _write_folder(tmp_path, labels, lambda label: _grey_palette_image(label, {1: (255, 0, 0)}))
    with pytest.raises(DataError, match=r"palette that is not greyscale classes: index 1 is the colour \(255, 0, 0\)"):
        read_slice_folder(tmp_path, case_pattern="file")


def test_a_mask_of_another_size_is_refused(tmp_path, labels):
    _write_folder(tmp_path, labels, Image.fromarray)
    Image.fromarray(np.zeros((12, 9), np.uint8)).save(tmp_path / "masks" / "002.png")
    with pytest.raises(DataError, match=r"mask .*002\.png is \(12, 9\) pixels but its image is \(33, 21\)"):
        read_slice_folder(tmp_path, case_pattern="file")


def test_file_names_without_a_slice_number_need_the_file_pattern(tmp_path, labels):
    _write_folder(tmp_path, labels, Image.fromarray)
    with pytest.raises(DataError, match="does not match the case pattern"):
        read_slice_folder(tmp_path)


def _rgba(label: np.ndarray, colour, alpha) -> Image.Image:
    """An RGBA mask: ``colour(label)`` (H, W, 3) and ``alpha(label)`` (H, W)."""
    return Image.fromarray(np.dstack([colour(label), alpha(label)]).astype(np.uint8), mode="RGBA")


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_mask_drawn_only_in_the_alpha_channel_is_read_from_it(tmp_path, labels, mode):
    def encode(label):
        alpha = np.where(label > 0, 255, 0).astype(np.uint8)
        image = _rgba(label, lambda lab: np.zeros((*lab.shape, 3)), lambda lab: alpha)
        return image if mode == "RGBA" else image.convert("LA")

    _write_folder(tmp_path, labels, encode)
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "binary"
    for volume in volumes:
        np.testing.assert_array_equal(volume.label[0], (labels[volume.case_id] > 0).astype(np.uint8))


def test_an_rgba_mask_whose_colour_and_alpha_agree_is_read_from_its_grey_levels(tmp_path, labels):
    _write_folder(tmp_path, labels, lambda label: _rgba(label, lambda lab: np.repeat(lab[..., None], 3, axis=2),
                                                        lambda lab: np.where(lab > 0, 255, 0)))
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "labels"
    for volume in volumes:
        np.testing.assert_array_equal(volume.label[0], labels[volume.case_id])


def test_an_rgba_mask_whose_colour_and_alpha_disagree_is_refused(tmp_path, labels, assert_one_line_error):
    _write_folder(tmp_path, labels, lambda label: _rgba(label, lambda lab: np.repeat(lab[..., None], 3, axis=2),
                                                        lambda lab: np.full(lab.shape, 255) - 100 * (lab == 1)))
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "data", "info", str(tmp_path), "--case-pattern", "file",
                           "--quiet"], capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, f"mask {tmp_path / 'masks' / '001.png'} holds different masks in its colour and its alpha")


def test_a_float_mask_with_fractions_is_refused_not_truncated_to_background(tmp_path, labels):
    fractions = {stem: np.where(label > 0, 0.8, 0.0).astype(np.float32) for stem, label in labels.items()}
    _write_folder(tmp_path, {stem: np.zeros_like(label) for stem, label in labels.items()}, Image.fromarray)
    for stem, mask in fractions.items():
        (tmp_path / "masks" / f"{stem}.png").unlink()
        Image.fromarray(mask, mode="F").save(tmp_path / "masks" / f"{stem}.tif")
    with pytest.raises(DataError, match=r"001\.tif holds the non-integer value 0\.8, more than 0\.001 from a whole"):
        read_slice_folder(tmp_path, case_pattern="file")


def _float_tiff_folder(root, labels, change) -> None:
    """``labels`` as a slice folder whose masks are float32 TIFFs of ``change(label)``."""
    _write_folder(root, labels, Image.fromarray)
    for stem, label in labels.items():
        (root / "masks" / f"{stem}.png").unlink()
        Image.fromarray(change(label.astype(np.float32)), mode="F").save(root / "masks" / f"{stem}.tif")


def test_float_tiff_masks_within_a_thousandth_of_a_label_are_that_label(tmp_path, labels):
    """float32 rounding of a resampling tool (0.9999999 for 1, 2.0009 for 2, -1e-7 for 0) in a
    float TIFF mask is read as the label it rounds to, as NIfTI label maps are: the labels are
    those drawn (they were refused as non-integer; 0.9999999 truncated would be background)."""
    def noisy(label):
        return np.select([label == 0, label == 1], [np.float32(-1e-7), np.float32(0.9999999)],
                         label + np.float32(9e-4)).astype(np.float32)

    _float_tiff_folder(tmp_path, labels, noisy)
    assert Image.open(tmp_path / "masks" / "001.tif").mode == "F"
    volumes, kind = read_slice_folder_with_kind(tmp_path, case_pattern="file")
    assert kind == "labels"
    for volume in volumes:
        np.testing.assert_array_equal(volume.label[0], labels[volume.case_id])


def test_float_tiff_masks_further_from_a_label_are_refused_at_the_nifti_tolerance(tmp_path, labels):
    _float_tiff_folder(tmp_path, labels, lambda label: np.where(label == 2, np.float32(2.002), label))
    with pytest.raises(DataError, match=r"001\.tif holds the non-integer value 2\.002, more than 0\.001 from a whole"):
        read_slice_folder(tmp_path, case_pattern="file", mask="labels")
