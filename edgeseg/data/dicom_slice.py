"""What the DICOM series reader requires of each slice on its own, in one place.

The reader (edgeseg.data.dicom) checks these while it stacks a series; the DICOM node checks
an incoming image with :func:`check_ct_slice` and :func:`slice_pixels` before acknowledging it,
so an image it accepts is one the reader will not refuse for anything the image alone decides
(the checks across slices, one orientation or size for the whole series, stay in the reader).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgeseg.data.dicom_values import dicom_numbers, one_line
from edgeseg.errors import DataError, require
from edgeseg.limits import check_dims

pydicom = require("pydicom", "io", "reading DICOM series")
log = logging.getLogger(__name__)

# Enhanced CT and Legacy Converted Enhanced CT Image Storage: one file holds the whole series,
# read whole by edgeseg.data.dicom_multiframe, never as one slice.
MULTI_FRAME_CT_CLASSES = {"1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT",
                          "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT"}
REQUIRED_TAGS = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                 "PixelSpacing", "Rows", "Columns")
# ImageOrientationPatient written with a few decimals is unit and orthogonal to about 1e-5.
COSINE_TOLERANCE = 1e-3
# PS3.3 C.8.2.1: a CT image's RescaleType is present only when the rescaled values are not HU
# (a dual-energy iodine map in mg/ml, an unspecified "US"); HU is the one value edgeseg reads.
HU_RESCALE_TYPE = "HU"
# HU given to pixels outside the field of view (PixelPaddingValue, up to PixelPaddingRangeLimit)
# that would otherwise read as more: air, the least a CT measures. A padding value stored high
# (63536 in unsigned pixels) read as 62512 HU, a ring of metal round the patient.
PADDING_HU = -1024.0
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
# pydicom's plugins that decode JPEG Extended's 12-bit form, the one CT is sent in: Pillow and
# GDCM decode its 8-bit form alone (pydicom refuses 12-bit data with either).
TWELVE_BIT_JPEG_PLUGINS = frozenset({"pylibjpeg"})


def check_slice_tags(dataset: pydicom.Dataset, path: Path | str) -> None:
    """Refuse a multi-frame image as a slice, and a slice lacking a tag the reader needs, naming the tags."""
    # An Enhanced CT keeps its geometry per frame, so it would otherwise be called truncated.
    (frames,) = dicom_numbers(dataset, "NumberOfFrames", path, 1, default=(1.0,))
    if frames > 1 or str(dataset.get("SOPClassUID", "")) in MULTI_FRAME_CT_CLASSES:
        raise DataError(f"{path} is a multi-frame CT image ({frames:g} frames, SOP class {dataset.get('SOPClassUID', '?')}), "
                        f"not a single-frame slice: convert it, e.g. with dcm2niix to NIfTI")
    missing = [tag for tag in REQUIRED_TAGS if tag not in dataset]
    if missing:
        raise DataError(f"DICOM file {path} lacks {', '.join(missing)} (truncated or not a CT slice?)")


def warn_of_missing_intercept(datasets: list[pydicom.Dataset], folder: Path | str) -> None:
    """One warning where files of a series of signed pixels lack RescaleIntercept (Type 1 in a CT
    image): their stored values (often HU + 1024) are read as HU. Unsigned pixels without it are
    refused by :func:`rescale`, in a line of their own, so they are not warned of first."""
    lacking = [dataset for dataset in datasets if "RescaleIntercept" not in dataset]
    if lacking and all(str(dataset.get("PixelRepresentation", 0)) == "1" for dataset in lacking):
        log.warning("DICOM series %s: %d of its %d files have no RescaleIntercept; their stored values are read as HU: "
                    "check that air reads about -1000 HU, or add the scanner's intercept", folder, len(lacking),
                    len(datasets))

def unit_cosines(cosines: np.ndarray, path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The row and column cosines of an ImageOrientationPatient, normalised; refused unless
    unit and orthogonal up to the rounding of their decimal strings (others would scale or skew
    the pixel grid silently: a 0.5-long column cosine halves the row spacing)."""
    row_cosine, column_cosine = cosines[:3], cosines[3:]
    lengths = np.linalg.norm(row_cosine), np.linalg.norm(column_cosine)
    if max(abs(lengths[0] - 1), abs(lengths[1] - 1), abs(row_cosine @ column_cosine)) > COSINE_TOLERANCE:
        raise DataError(f"{path} has ImageOrientationPatient {cosines.tolist()}, whose row and column cosines "
                        f"are not unit-length orthogonal vectors (lengths {lengths[0]:.4g}, {lengths[1]:.4g}; dot product "
                        f"{row_cosine @ column_cosine:.4g})")
    return row_cosine / lengths[0], column_cosine / lengths[1]


def pixel_spacing(dataset: pydicom.Dataset, path: Path | str) -> tuple[float, float]:
    """(row spacing, column spacing) in mm, refused unless both are positive."""
    row_spacing, column_spacing = dicom_numbers(dataset, "PixelSpacing", path, 2)
    if min(row_spacing, column_spacing) <= 0:
        raise DataError(f"DICOM file {path}: field PixelSpacing is {[row_spacing, column_spacing]}, "
                        f"expected positive mm")
    return row_spacing, column_spacing


def rescale(dataset: pydicom.Dataset, path: Path | str) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept; a slope of 0 would erase the image, so it is refused."""
    (unsigned,) = dicom_numbers(dataset, "PixelRepresentation", path, 1, default=(0.0,))
    if "RescaleIntercept" not in dataset and unsigned == 0:
        # Required in a CT image; signed pixels without it are taken as HU already, but unsigned
        # ones would read as 0 HU and up everywhere (no air, no fat): an intercept was dropped.
        raise DataError(f"DICOM file {path} lacks RescaleIntercept and its pixels are unsigned (PixelRepresentation "
                        f"0), so none would read below 0 HU (air is -1000): the HU it holds are unknown")
    (slope,) = dicom_numbers(dataset, "RescaleSlope", path, 1, default=(1.0,))
    (intercept,) = dicom_numbers(dataset, "RescaleIntercept", path, 1, default=(0.0,))
    if slope == 0:
        raise DataError(f"DICOM file {path}: field RescaleSlope is 0, which maps every pixel to the intercept")
    rescale_type = str(dataset.get("RescaleType", "") or "").strip()
    if rescale_type and rescale_type.upper() != HU_RESCALE_TYPE:
        raise DataError(f"DICOM file {path}: field RescaleType is {rescale_type!r}, so its rescaled values are not "
                        f"Hounsfield units (a derived map?); edgeseg segments HU images only")
    return slope, intercept


def padding_pixels(dataset: pydicom.Dataset, pixels: np.ndarray, path: Path | str,
                   warned: set[str] | None = None) -> np.ndarray | None:
    """Where ``pixels`` (as decoded) hold PixelPaddingValue, or lie between it and
    PixelPaddingRangeLimit: pixels outside the field of view, no measurement; None when the
    image declares no padding. A 16-bit padding value written in the other signedness than the
    pixels (SS -2000 in signed pixels written as 63536) is read with its sign reinterpreted; one
    that then still lies outside what BitsStored bits of the pixels hold is ignored, with one
    warning per field (``warned`` holds the fields already warned of)."""
    if "PixelPaddingValue" not in dataset:
        return None
    fields = ["PixelPaddingValue"] + (["PixelPaddingRangeLimit"] if "PixelPaddingRangeLimit" in dataset else [])
    bits = int(dicom_numbers(dataset, "BitsStored", path, 1, default=(16.0,))[0])
    least, most = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if pixels.dtype.kind == "i" else (0, (1 << bits) - 1)
    stored = []
    for field in fields:
        value = int(dicom_numbers(dataset, field, path, 1)[0])
        if not least <= value <= most and -32768 <= value <= 65535:
            value += 65536 if value < 0 else -65536 if value >= 32768 else 0
        if not least <= value <= most:
            if warned is None or field not in warned:
                log.warning("DICOM file %s: field %s is %s, outside the %d-bit %s pixels' range %d..%d; ignored",
                            path, field, dataset.get(field), bits, "signed" if least < 0 else "unsigned", least, most)
                if warned is not None:
                    warned.add(field)
            return None
        stored.append(value)
    return (pixels >= min(stored)) & (pixels <= max(stored))


def air_outside_view(hu: np.ndarray, dataset: pydicom.Dataset, pixels: np.ndarray, path: Path | str,
                     warned: set[str] | None = None) -> None:
    """Set the HU of ``pixels``' padding (:func:`padding_pixels`) in ``hu`` to ``PADDING_HU`` at most:
    outside the field of view, no HU was measured there."""
    padded = padding_pixels(dataset, pixels, path, warned)
    if padded is not None:
        hu[padded] = np.minimum(hu[padded], np.float32(PADDING_HU))


def slice_size(dataset: pydicom.Dataset, path: Path | str) -> tuple[int, int]:
    """(Rows, Columns), refused unless both are positive."""
    rows, columns = (int(dicom_numbers(dataset, field, path, 1)[0]) for field in ("Rows", "Columns"))
    check_dims((rows, columns), f"DICOM file {path}", "fields Rows, Columns")
    return rows, columns


def check_decoder(dataset: pydicom.Dataset, path: Path | str) -> None:
    """Refuse compressed pixel data in a transfer syntax no installed decoder reads, naming the
    syntax and what would decode it: pydicom's own message came out as "truncated?", which sends
    the reader after a sound file."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not UID(str(syntax)).is_compressed:
        return
    syntax = UID(str(syntax))
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DataError(f"DICOM file {path}: pixel data is in {syntax.name} ({syntax}), which edgeseg cannot decode; "
                        f"convert the series to an uncompressed transfer syntax") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise DataError(f"DICOM file {path}: pixel data is in {syntax.name} ({syntax}) and no installed decoder reads "
                        f"it (pydicom's decoders need {needs}); install one, or convert the series to an uncompressed "
                        f"transfer syntax")
    (bits,) = dicom_numbers(dataset, "BitsStored", path, 1, default=(16.0,))
    if syntax == JPEG_EXTENDED and bits > 8 and not set(decoder.available_plugins) & TWELVE_BIT_JPEG_PLUGINS:
        raise DataError(f"DICOM file {path}: pixel data is 12-bit {syntax.name} ({syntax}), which only pylibjpeg-libjpeg "
                        f"decodes here (installed: {', '.join(decoder.available_plugins)}); install it, or convert the "
                        f"series to an uncompressed transfer syntax")


def slice_pixels(dataset: pydicom.Dataset, path: Path | str, rows: int, columns: int) -> np.ndarray:
    """The decoded pixels of one slice, refused unless they are one ``rows`` x ``columns``
    grey-level image."""
    check_decoder(dataset, path)
    try:
        # pydicom reads pixel data lazily; a truncated file only fails on decoding.
        pixels = dataset.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data
        raise DataError(f"cannot decode pixel data of {path} (truncated?): {one_line(exc)}") from None
    if pixels.shape != (rows, columns) or pixels.dtype.kind not in "biuf":
        raise DataError(f"{path}: pixel data decodes to {pixels.dtype} {list(pixels.shape)}, expected one "
                        f"{rows}x{columns} grey-level slice (SamplesPerPixel, BitsAllocated?)")
    return pixels


def check_ct_slice(dataset: pydicom.Dataset, path: Path | str) -> None:
    """Refuse one slice that the series reader would refuse on its own account (pixels aside:
    :func:`slice_pixels`): a multi-frame image, a missing required tag, a position, orientation,
    pixel spacing, rescale or size that is no valid number."""
    check_slice_tags(dataset, path)
    dicom_numbers(dataset, "ImagePositionPatient", path, 3)
    unit_cosines(np.asarray(dicom_numbers(dataset, "ImageOrientationPatient", path, 6)), path)
    pixel_spacing(dataset, path)
    rescale(dataset, path)
    slice_size(dataset, path)
