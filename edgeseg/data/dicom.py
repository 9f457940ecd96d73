"""DICOM CT series reader: a folder of single-frame slices becomes one LPS-layout Volume.

Slices are ordered by their position along the slice normal, not by file name or instance
number, and pixel rows / columns are mapped onto the LPS display axes from the orientation
cosines, so any acquisition orientation arrives in the layout ``Volume`` promises. The reader
also returns a :class:`DicomSeriesInfo` with the source files and UIDs in volume order, which a
DICOM SEG writer needs to reference the images it segmented.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require

nio = require("nibabel.orientations", "io", "reading DICOM series")
pydicom = require("pydicom", "io", "reading DICOM series")
from pydicom.errors import InvalidDicomError  # noqa: E402  (pydicom is known present here)

from edgeseg.data.dicom_slice import (air_outside_view, check_slice_tags, pixel_spacing, rescale, slice_pixels, slice_size,
                                     unit_cosines, warn_of_missing_intercept)
from edgeseg.data.dicom_magic import looks_like_dicom  # noqa: F401  (imported from here by other modules)
from edgeseg.data.dicom_multiframe import MultiFrameCT, is_multiframe, multiframe_series
from edgeseg.data.dicom_refs import DicomSeriesInfo
from edgeseg.data.dicom_values import decode_elements, dicom_numbers, one_line
from edgeseg.data.nifti import spacing_from_affine, to_lps_layout
from edgeseg.data.volume import Volume
from edgeseg.limits import check_volume
from edgeseg.progress import progress_bar

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# Objects that share a folder with images but carry no pixels of their own.
NON_IMAGE_MODALITIES = frozenset({"SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC"})
# Slices closer than this along the normal are the same position (duplicate acquisitions).
DUPLICATE_POSITION_MM = 1e-3
# Relative spread of slice gaps above which the series is reported as non-uniform.
UNIFORM_GAP_TOLERANCE = 0.05
# Slice positions further than this fraction of a pixel, across the slice normal, from the
# straight line through the first and last positions: the series' affine places those slices'
# pixels that far off. A gantry tilt moves in-plane in step with the height and stays on it.
OFF_LINE_PIXELS = 0.1

_DEFER_BYTES = 64 * 1024
_LPS = nio.axcodes2ornt(("L", "P", "S"))
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def _scan_folder(folder: Path, progress: bool = False) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
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


def _pick_series(folder: Path, series: dict, series_uid: str | None) -> tuple[str, list]:
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_describe(uid, members) for uid, members in series.items())
            raise DataError(f"series {series_uid} is not in {folder}; found: {listing}")
        return series_uid, series[series_uid]
    if len(series) > 1:
        listing = "; ".join(_describe(uid, members) for uid, members in series.items())
        raise DataError(f"{folder} holds {len(series)} series, pick one with series_uid=: {listing}")
    return next(iter(series.items()))


def _orientation(members: list[tuple[Path, pydicom.Dataset]]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column direction cosines shared by all slices."""
    first_path, first = members[0]
    cosines = np.asarray(dicom_numbers(first, "ImageOrientationPatient", first_path, 6))
    for path, dataset in members[1:]:
        other = np.asarray(dicom_numbers(dataset, "ImageOrientationPatient", path, 6))
        if not np.allclose(other, cosines, atol=1e-4):
            raise DataError(
                f"{path} has ImageOrientationPatient {other.tolist()} but {first_path.name} has "
                f"{cosines.tolist()}; a series must have one orientation"
            )
    return unit_cosines(cosines, first_path)


def _uneven(gaps: np.ndarray) -> bool:
    """Slice gaps that differ by more than the tolerance: a slice is missing, or the series
    mixes spacings."""
    return bool(gaps.size > 1 and np.ptp(gaps) > UNIFORM_GAP_TOLERANCE * np.median(gaps))


def _sort_by_position(members: list, normal: np.ndarray, warn_gaps: bool) -> tuple[list, np.ndarray]:
    positions = [float(np.dot(np.asarray(dicom_numbers(ds, "ImagePositionPatient", path, 3)), normal))
                 for path, ds in members]
    order = sorted(range(len(members)), key=lambda i: (positions[i], members[i][0].name))
    members = [members[i] for i in order]
    positions = np.asarray([positions[i] for i in order])
    gaps = np.diff(positions)
    duplicates = np.flatnonzero(gaps < DUPLICATE_POSITION_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise DataError(
            f"{members[k][0]} and {members[k + 1][0]} lie at the same slice position "
            f"{positions[k]:.3f} mm; the folder mixes acquisitions"
        )
    if _uneven(gaps):
        # A 2-D model does not care; the affine (first-to-last average) will be approximate. Said
        # at debug level to a caller that refuses such a series itself (NIfTI output), so once.
        log.log(logging.WARNING if warn_gaps else logging.DEBUG, "slice gaps in %s vary from %.3g to %.3g mm (missing slices?)",
                    members[0][0].parent, gaps.min(), gaps.max())
    return members, positions


def _off_line(members: list, normal: np.ndarray) -> tuple[float, str] | None:
    """(mm, file name) of the sorted slice whose ImagePositionPatient lies furthest from the
    straight line from the first position to the last, across the slice normal, where that is
    over :data:`OFF_LINE_PIXELS` of the smaller pixel spacing; else None. Each slice is compared
    with the point of the line at its own height along the normal, not at its index: a missing
    slice or uneven gaps (told apart by ``uneven_gaps``) move no slice of a straight line, a
    gantry-tilted one included, off it. Logged at debug level only: the writers that cannot hold
    the finding refuse in one line saying it, and a DICOM SEG places each slice exactly."""
    if len(members) < 3:
        return None
    positions = np.asarray([dicom_numbers(ds, "ImagePositionPatient", path, 3) for path, ds in members])
    heights = (positions - positions[0]) @ normal  # ascending from 0, by the sort (duplicates refused)
    along = heights[:, None] / heights[-1]
    residual = positions - (positions[0] + along * (positions[-1] - positions[0]))
    residual -= np.outer(residual @ normal, normal)
    distance = np.linalg.norm(residual, axis=1)
    worst = int(np.argmax(distance))
    if distance[worst] <= OFF_LINE_PIXELS * min(pixel_spacing(members[0][1], members[0][0])):
        return None
    log.debug("slice %s of %s lies %.3g mm off the line through the first and last slice positions",
              members[worst][0].name, members[0][0].parent, distance[worst])
    return float(distance[worst]), members[worst][0].name


def _stack_hu(members: list[tuple[Path, pydicom.Dataset]], progress: bool = False,
              multi: MultiFrameCT | None = None) -> np.ndarray:
    """HU of the sorted slices (``multi``: the frames of that file, whose views ``members`` are)."""
    first_path = members[0][0]
    rows, columns = slice_size(members[0][1], first_path)
    check_volume((len(members), rows, columns), f"DICOM series {first_path.parent}")
    stack = np.empty((len(members), rows, columns), dtype=np.float32)
    warn_of_missing_intercept([dataset for _, dataset in members], first_path.parent)
    warned_padding: set[str] = set()
    # a multi-frame file is read front to back, one frame at a time, its frames in stack order
    frames = multi.frames(rows, columns) if multi else None
    order = multi.stack_order(members) if multi else range(len(members))
    for k in progress_bar(order, desc="reading DICOM pixels", unit="slice", shown=progress):
        path, dataset = members[k]
        if slice_size(dataset, path) != (rows, columns):
            raise DataError(
                f"{path} is {dataset.Rows}x{dataset.Columns} pixels but {first_path.name} is "
                f"{rows}x{columns}; a series must have one size"
            )
        slope, intercept = rescale(dataset, path)
        pixels = next(frames) if multi else slice_pixels(dataset, path, rows, columns)
        stack[k] = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        air_outside_view(stack[k], dataset, pixels, path, warned_padding)
        # pydicom keeps both the file's pixel bytes and the decoded array on the dataset, and
        # the datasets live until the series is read: two more copies of the volume at the peak
        if multi is None:
            del dataset.PixelData
        if not np.isfinite(stack[k]).all():  # slice by slice: a mask of the whole volume is a copy too
            raise DataError(f"DICOM series {first_path.parent}: pixel values x RescaleSlope + RescaleIntercept "
                            f"overflow float32 (fields RescaleSlope, RescaleIntercept)")
    if multi is not None:  # its header is kept without pixels, as single-frame slices' are
        del multi.dataset.PixelData
    return stack


def _stack_affine(members: list, row_cosine: np.ndarray, column_cosine: np.ndarray,
                  normal: np.ndarray) -> np.ndarray:
    """RAS affine of the (column, row, slice) index of the sorted stack."""
    first_path, first = members[0]
    row_spacing, column_spacing = pixel_spacing(first, first_path)
    for path, dataset in members[1:]:
        other = dicom_numbers(dataset, "PixelSpacing", path, 2)
        if not np.allclose(other, (row_spacing, column_spacing), atol=1e-4):
            raise DataError(f"{path} has PixelSpacing {list(other)} but {first_path.name} has "
                            f"{[row_spacing, column_spacing]}; a series must have one pixel size")
    origin = np.asarray(dicom_numbers(first, "ImagePositionPatient", first_path, 3))
    if len(members) > 1:
        last = np.asarray(dicom_numbers(members[-1][1], "ImagePositionPatient", members[-1][0], 3))
        slice_step = (last - origin) / (len(members) - 1)
    else:
        field = next((f for f in ("SpacingBetweenSlices", "SliceThickness")
                      if f in first and str(first[f].value or "").strip()), None)
        (thickness,) = dicom_numbers(first, field, first_path, 1) if field else (1.0,)
        if field is None:  # said, not silently assumed: volumes in mL and 3-D distances use it
            log.warning("%s is a single slice without SpacingBetweenSlices or SliceThickness; its thickness "
                        "is taken as 1 mm", first_path)
        if thickness <= 0:
            raise DataError(f"DICOM file {first_path}: field {field} is {thickness:g}, expected positive mm")
        slice_step = normal * thickness
    lps = np.eye(4)
    # DICOM: the row cosine is the direction of increasing column index, and PixelSpacing is
    # (distance between rows, distance between columns).
    lps[:3, 0] = row_cosine * column_spacing
    lps[:3, 1] = column_cosine * row_spacing
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def read_dicom_series_with_refs(
    folder: str | os.PathLike, series_uid: str | None = None, case_id: str | None = None, progress: bool = False,
    keep_headers: bool = False, warn_gaps: bool = True,
) -> tuple[Volume, DicomSeriesInfo]:
    """Read one CT series from a folder of DICOM files, or from one file holding it (an Enhanced
    CT, :mod:`edgeseg.data.dicom_multiframe`); also return its source references.

    Non-DICOM files, DICOMDIR, pixel-less objects (SR, KO, ...) and DICOM SEG label maps
    are skipped. A folder with several series needs ``series_uid``. The modality of every file must be CT.
    HU = stored value x RescaleSlope + RescaleIntercept. ``case_id`` defaults to the folder
    name (a file's: its stem); ``slice_ids`` are the file names of the slices in the Volume's z
    order (``STEM_frameN`` for the frames of a multi-frame file). ``progress``
    shows the headers and then the pixels being read on stderr (:mod:`edgeseg.progress`).
    ``keep_headers`` keeps the slices' headers (no pixel data) in the DicomSeriesInfo, for a
    caller that writes a DICOM SEG of the series. ``warn_gaps=False``: uneven slice gaps (a missing
    slice) are not warned of, for a caller that refuses them in a line of its own.
    """
    folder = Path(folder)
    uid, members = _pick_series(folder, _scan_folder(folder, progress), series_uid)
    for path, dataset in members:  # every file: one MR slice in a CT series is not CT either
        modality = str(dataset.get("Modality", "unknown"))
        if modality != "CT":
            raise DataError(f"series {uid} in {folder}: {path.name} is {modality}, not CT")
    multi = multiframe_series(members, uid)
    if multi is not None:  # one Enhanced CT file: its frames, checked and stacked as slices are
        members = multi.views
    first_path, frame = members[0][0], str(members[0][1].get("FrameOfReferenceUID", ""))
    for path, dataset in members:
        if multi is None:
            check_slice_tags(dataset, path)
        if str(dataset.get("FrameOfReferenceUID", "")) != frame:  # positions in two coordinate systems
            raise DataError(f"{path} has FrameOfReferenceUID {dataset.get('FrameOfReferenceUID', '(none)')} but "
                            f"{first_path.name} has {frame or '(none)'}; a series lies in one frame of reference")
    row_cosine, column_cosine = _orientation(members)
    normal = np.cross(row_cosine, column_cosine)
    members, positions = _sort_by_position(members, normal, warn_gaps)
    gaps = np.diff(positions)
    stack = _stack_hu(members, progress, multi)
    affine_ras = _stack_affine(members, row_cosine, column_cosine, normal)
    source_orientation = nio.io_orientation(affine_ras)
    hu, lps_affine = to_lps_layout(stack.transpose(2, 1, 0), affine_ras, f"DICOM series {folder}")

    names = ([f"{multi.path.stem}_frame{multi.frame_number(ds)}" for _, ds in members] if multi
             else [path.name for path, _ in members])
    transform = nio.ornt_transform(source_orientation, _LPS)
    if int(transform[2, 0]) == 2:  # the stack axis became z: name slices after their files
        slice_ids = names[::-1] if transform[2, 1] < 0 else names
    else:
        slice_ids = [str(k) for k in range(hu.shape[0])]
    first = members[0][1]
    info = DicomSeriesInfo(
        series_instance_uid=uid,
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        sop_class_uid=str(first.get("SOPClassUID", "")),
        files=(multi.path,) if multi else tuple(path for path, _ in members),
        sop_instance_uids=tuple(str(ds.get("SOPInstanceUID", "")) for _, ds in ([members[0]] if multi else members)),
        source_orientation=tuple((float(a), float(f)) for a, f in source_orientation),
        headers=(((multi.dataset,) if multi else tuple(ds for _, ds in members)) if keep_headers else None),
        frame_numbers=tuple(multi.frame_number(ds) for _, ds in members) if multi else None,
    )
    volume = Volume(
        hu=hu,
        spacing=spacing_from_affine(lps_affine),
        affine=lps_affine,
        case_id=case_id if case_id is not None else folder.stem if folder.is_file() else folder.name,
        modality="CT",
        source=str(folder),
        slice_ids=slice_ids,
        uneven_gaps=(float(gaps.min()), float(gaps.max())) if _uneven(gaps) else None,
        off_line=_off_line(members, normal),
        body_part=str(first.get("BodyPartExamined", "") or "").strip().upper(),
    )
    return volume, info


def read_dicom_series(
    folder: str | os.PathLike, series_uid: str | None = None, case_id: str | None = None
) -> Volume:
    """Read one CT series from a folder of DICOM files (see :func:`read_dicom_series_with_refs`)."""
    return read_dicom_series_with_refs(folder, series_uid=series_uid, case_id=case_id)[0]
