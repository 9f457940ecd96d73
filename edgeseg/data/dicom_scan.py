"""The DICOM files of a folder (or one Enhanced CT file) by series: which files are images, which
series holds them, and the one series a reader is to take (:mod:`edgeseg.data.dicom`)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

from edgeseg.errors import DataError, require

pydicom = require("pydicom", "io", "reading DICOM series")
from pydicom.errors import InvalidDicomError  # noqa: E402  (pydicom is known present here)

from edgeseg.data.dicom_multiframe import is_multiframe  # noqa: E402
from edgeseg.data.dicom_values import decode_elements, one_line  # noqa: E402
from edgeseg.progress import progress_bar  # noqa: E402

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Objects that share a folder with images but carry no pixels of their own.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC"})

_DEFER_BYTES = 64 * 1024


def _read_file(path: Path) -> pydicom.Dataset | None:
    """Read one file; None when it is clearly not a DICOM image (text, DICOMDIR, SR, ...)."""
    try:
        # Pixel data is deferred (read from the file on first use): a series is scanned whole
        # before one is chosen, and holding every slice's bytes twice would double memory.
        dataset = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
        decode_elements(dataset)
    except InvalidDicomError:
        # No "DICM" preamble: old ACR-NEMA style files still exist, so look inside before
        # deciding; a file is taken only when it has what a slice needs.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path, force=True, defer_size=_DEFER_BYTES)
        except Exception:  # noqa: BLE001 - arbitrary bytes make pydicom raise anything
            return None
        if "SOPInstanceUID" not in dataset or "PixelData" not in dataset:
            return None
        try:
            decode_elements(dataset)
        except Exception as exc:  # noqa: BLE001 - as below
            raise DataError(f"cannot read DICOM file {path}: {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - with a DICM preamble, any parse failure is corruption
        raise DataError(f"cannot read DICOM file {path}: {one_line(exc)}") from exc
    media_class = getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", None)
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset:
        return None
    if "PixelData" not in dataset:
        if str(dataset.get("Modality", "")) in NON_IMAGE_MODALITIES:
            return None
        raise DataError(f"DICOM file {path} has no pixel data (truncated?)")
    if "SeriesInstanceUID" not in dataset:
        raise DataError(f"DICOM file {path} lacks SeriesInstanceUID (truncated?)")
    return dataset


def scan_folder(folder: Path, progress: bool = False) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """The images of ``folder`` by series (a file: that file alone, one Enhanced CT, :func:`_scan_file`)."""
    if folder.is_file():
        return _scan_file(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    segmentations = []
    files = [path for path in sorted(folder.iterdir()) if path.is_file() and not path.name.startswith(".")]
    for path in progress_bar(files, desc="reading DICOM headers", unit="file", shown=progress):
        dataset = _read_file(path)
        if dataset is None:
            continue
        # A DICOM SEG is a label map for a series, not an image series of its own; it is
        # read by edgeseg.data.dicom_seg when a label map is asked for.
        if str(dataset.get("SOPClassUID", "")) == SEGMENTATION_SOP_CLASS:
            segmentations.append(path.name)
        else:
            series[str(dataset.SeriesInstanceUID)].append((path, dataset))
    if not series and segmentations:
        raise DataError(
            f"{folder} holds only DICOM SEG files ({', '.join(segmentations)}), no image series; "
            f"open the folder of the series they label"
        )
    if not series:
        raise DataError(f"no images found in {folder} (no DICOM image files)")
    return series


def _scan_file(path: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """A file read on its own must hold a whole series: a multi-frame CT image (an Enhanced CT).
    One slice of a series is refused (the user most likely meant its folder), and so is any
    other object, by its SOP class and modality."""
    dataset = _read_file(path)
    if dataset is None or str(dataset.get("SOPClassUID", "")) == SEGMENTATION_SOP_CLASS \
            or str(dataset.get("Modality", "")) != "CT":
        raise DataError(_not_a_ct_image(path, dataset))
    if not is_multiframe(dataset, path):
        raise DataError(f"{path} is one slice of series {dataset.SeriesInstanceUID}; pass its folder ({path.parent})")
    return {str(dataset.SeriesInstanceUID): [(path, dataset)]}


def _not_a_ct_image(path: Path, dataset: pydicom.Dataset | None) -> str:
    """What the DICOM object at ``path`` is, where it is not a CT image, by SOP class and modality."""
    if dataset is None:  # skipped by the reader: read what it says it is
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - arbitrary bytes make pydicom raise anything
            dataset = pydicom.Dataset()
    media_class = getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", "")
    sop_class = str(dataset.get("SOPClassUID", "") or media_class or "")
    modality = str(dataset.get("Modality", "") or "")
    if not sop_class and not modality:
        return f"{path} is not a DICOM image (no SOP class, no modality); expected an Enhanced CT file or a series folder"
    what = "SEG" if sop_class == SEGMENTATION_SOP_CLASS else modality or "object"
    name = pydicom.uid.UID(sop_class).name if sop_class else "no SOP class"
    return f"{path} is a DICOM {what} ({name}), not a CT image"


def _describe(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> str:
    first = members[0][1]
    return f"{uid} ({first.get('Modality', '?')}, {len(members)} files, {first.get('SeriesDescription', '')!r})"


def pick_series(folder: Path, series: dict, series_uid: str | None) -> tuple[str, list]:
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_describe(uid, members) for uid, members in series.items())
            raise DataError(f"series {series_uid} is not in {folder}; found: {listing}")
        return series_uid, series[series_uid]
    if len(series) > 1:
        listing = "; ".join(_describe(uid, members) for uid, members in series.items())
        raise DataError(f"{folder} holds {len(series)} series, pick one with series_uid=: {listing}")
    return next(iter(series.items()))
