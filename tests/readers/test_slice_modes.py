"""Slice images in the Pillow modes whose first channel is not grey, and files holding a stack.

Found by generating slice folders in every mode TIFF, PNG, BMP and JPEG store and comparing the
HU read with the grey levels written: CMYK slices read as all-zero HU (channel 0 is cyan), a
bilevel image's white as HU 1, a bilevel mask under ``--mask binary`` as empty, and a multi-page
TIFF or animated PNG as its first page alone.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgeseg.data import read_slice_folder
from edgeseg.errors import DataError

GREY = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)


def _folder(tmp_path, image: bytes, mask: bytes | None = None, suffix: str = "png"):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f"p_0.{suffix}").write_bytes(image)
    if mask is not None:
        (tmp_path / "masks").mkdir()
        (tmp_path / "masks" / f"p_0.{suffix}").write_bytes(mask)
    return tmp_path


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt, suffix", [("TIFF", "tif"), ("JPEG", "jpg")])
def test_a_cmyk_slice_reads_as_its_grey_levels(tmp_path, fmt, suffix):
    cmyk = Image.fromarray(GREY, "L").convert("CMYK")
    assert np.asarray(cmyk)[..., 0].max() == 0  # the cyan channel the reader once took for HU
    volume = read_slice_folder(_folder(tmp_path, _encoded(cmyk, fmt), suffix=suffix))[0]
    np.testing.assert_allclose(volume.hu[0], GREY, atol=2)  # JPEG's rounding


def test_a_bilevel_image_reads_white_as_255(tmp_path):
    bilevel = Image.fromarray(np.where(GREY > 127, 255, 0).astype(np.uint8), "L").convert("1")
    volume = read_slice_folder(_folder(tmp_path, _encoded(bilevel, "PNG")), intensity="window:-100,155")[0]
    np.testing.assert_array_equal(volume.hu[0], np.where(GREY > 127, 155.0, -100.0))


@pytest.mark.parametrize("kind", ["binary", "auto", "labels"])
def test_a_bilevel_mask_is_its_white_pixels_whatever_the_mask_kind(tmp_path, kind):
    truth = GREY > 127
    bilevel = Image.fromarray(truth.astype(np.uint8) * 255, "L").convert("1")
    folder = _folder(tmp_path, _encoded(Image.fromarray(GREY, "L"), "PNG"), _encoded(bilevel, "PNG"))
    volume = read_slice_folder(folder, mask=kind)[0]
    np.testing.assert_array_equal(volume.label[0], truth.astype(np.uint8))


@pytest.mark.parametrize("fmt, suffix", [("TIFF", "tif"), ("PNG", "png")])
def test_a_file_of_several_frames_is_refused(tmp_path, fmt, suffix):
    first, second = Image.fromarray(GREY, "L"), Image.fromarray(255 - GREY, "L")
    stack = _encoded(first, fmt, save_all=True, append_images=[second])
    with pytest.raises(DataError, match="holds 2 frames"):
        read_slice_folder(_folder(tmp_path, stack, suffix=suffix))

