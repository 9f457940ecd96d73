"""Checked values of DICOM elements: numbers that must be finite numbers, decoded up front.

pydicom decodes element values lazily and accepts whatever a file holds; the readers take
numeric fields (rescale, spacing, positions, sizes) only through :func:`dicom_numbers`, which
names the file and the field when a value is missing, empty, not a number or not finite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require

pydicom = require("pydicom", "io", "reading DICOM files")

PIXEL_DATA_TAG = 0x7FE00010


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (pydicom's and numpy's span several)."""
    return " ".join(str(exc).split())


def dicom_numbers(dataset: pydicom.Dataset, field: str, path: Path, count: int | None = None,
                  default: tuple[float, ...] | None = None) -> tuple[float, ...]:
    """The finite numbers of a numeric DICOM field (DS, IS, US, ...), or DataError naming file and field.

    A missing field gives ``default`` (an error when None); an empty, non-numeric or
    non-finite value, or one with other than ``count`` numbers, is refused rather than guessed.
    """
    if field not in dataset:
        if default is None:
            raise DataError(f"DICOM file {path} lacks {field}")
        return default
    try:
        raw = dataset[field].value
        values = list(raw) if isinstance(raw, (list, tuple, pydicom.multival.MultiValue)) else [raw]
        numbers = tuple(float(v) for v in values if v is not None and str(v).strip() != "")
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types converting a corrupt value
        raise DataError(f"DICOM file {path}: field {field} is not a number ({one_line(exc)})") from None
    if not numbers:
        raise DataError(f"DICOM file {path}: field {field} is empty")
    if count is not None and len(numbers) != count:
        raise DataError(f"DICOM file {path}: field {field} has {len(numbers)} values, expected {count}")
    if not all(np.isfinite(numbers)):
        raise DataError(f"DICOM file {path}: field {field} is {list(numbers)}, not finite")
    return numbers


def decode_elements(dataset: pydicom.Dataset) -> None:
    """Convert every element but the (deferred) pixel data now: pydicom decodes values lazily,
    so a corrupt one would otherwise raise (NotImplementedError, ValueError, ...) wherever it is
    first read."""
    meta = getattr(dataset, "file_meta", None)
    for part in (meta, dataset) if meta is not None else (dataset,):
        for tag in list(part.keys()):
            if tag == PIXEL_DATA_TAG:
                continue
            element = part[tag]
            if element.VR == "SQ":
                for item in element.value:
                    decode_elements(item)
