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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require

nio = require("nibabel.orientations", "io", "reading DICOM series")
pydicom = require("pydicom", "io", "reading DICOM series")

from edgeseg.data.dicom_scan import SEGMENTATION_SOP_CLASS, pick_series, scan_folder  # noqa: F401 (imported from here)
from edgeseg.data.dicom_slice import (air_outside_view, check_slice_tags, pixel_spacing, rescale, slice_pixels, slice_size,
                                     unit_cosines, warn_of_missing_intercept)
from edgeseg.data.dicom_magic import looks_like_dicom  # noqa: F401  (imported from here by other modules)
from edgeseg.data.dicom_multiframe import MultiFrameCT, multiframe_series
from edgeseg.data.dicom_refs import DicomSeriesInfo
from edgeseg.data.dicom_values import dicom_numbers
from edgeseg.data.dicom_volumes import PICK_BY_FOLDER, SeriesVolume, pick_volume, split_volumes
from edgeseg.data.nifti import spacing_from_affine, to_lps_layout
from edgeseg.data.volume import Volume
from edgeseg.limits import check_volume
from edgeseg.progress import progress_bar

log = logging.getLogger(__name__)

# Slices closer than this along the normal are the same position (duplicate acquisitions).
DUPLICATE_POSITION_MM = 1e-3
# Relative spread of slice gaps above which the series is reported as non-uniform.
UNIFORM_GAP_TOLERANCE = 0.05
# Slice positions further than this fraction of a pixel, across the slice normal, from the
# straight line through the first and last positions: the series' affine places those slices'
# pixels that far off. A gantry tilt moves in-plane in step with the height and stays on it.
OFF_LINE_PIXELS = 0.1

_LPS = nio.axcodes2ornt(("L", "P", "S"))
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


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
    frames = multi.frames(rows, columns, {multi.frame_number(ds) for _, ds in members}) if multi else None
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
    if multi is not None and "PixelData" in multi.dataset:  # its header kept without pixels, as slices' are
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
    keep_headers: bool = False, warn_gaps: bool = True, volume: int | None = None, pick_hint: str = PICK_BY_FOLDER,
) -> tuple[Volume, DicomSeriesInfo]:
    """Read one CT series from a folder of DICOM files, or from one file holding it (an Enhanced
    CT, :mod:`edgeseg.data.dicom_multiframe`); also return its source references.

    Non-DICOM files, DICOMDIR, pixel-less objects (SR, KO, ...) and DICOM SEG label maps
    are skipped. A folder with several series needs ``series_uid``. The modality of every file must be CT.
    A series holding several volumes (:mod:`edgeseg.data.dicom_volumes`) needs ``volume`` (1-based);
    without it, it is refused in one line listing them and ending with ``pick_hint`` (what to do).
    HU = stored value x RescaleSlope + RescaleIntercept. ``case_id`` defaults to the folder
    name (a file's: its stem); ``slice_ids`` are the file names of the slices in the Volume's z
    order (``STEM_frameN`` for the frames of a multi-frame file). ``progress``
    shows the headers and then the pixels being read on stderr (:mod:`edgeseg.progress`).
    ``keep_headers`` keeps the slices' headers (no pixel data) in the DicomSeriesInfo, for a
    caller that writes a DICOM SEG of the series. ``warn_gaps=False``: uneven slice gaps (a missing
    slice) are not warned of, for a caller that refuses them in a line of its own.
    """
    folder = Path(folder)
    uid, members, multi = _series_members(folder, series_uid, progress)
    chosen = pick_volume(split_volumes(members, uid), volume, f"series {uid} in {folder}", pick_hint)
    return _read_volume(folder, uid, chosen.members, multi, case_id, progress, keep_headers, warn_gaps)


def series_volumes(folder: str | os.PathLike, series_uid: str | None = None) -> list[SeriesVolume]:
    """The volumes of the series in ``folder`` (:func:`~edgeseg.data.dicom_volumes.split_volumes`),
    from the headers alone."""
    folder = Path(folder)
    uid, members, _ = _series_members(folder, series_uid, False)
    return split_volumes(members, uid)


def read_dicom_volumes(folder: str | os.PathLike, keep_headers: bool = False
                       ) -> Iterator[tuple[SeriesVolume, Volume, DicomSeriesInfo]]:
    """Each volume of the one series in ``folder`` (:mod:`edgeseg.data.dicom_volumes`), read in
    turn as :func:`read_dicom_series_with_refs` reads one; all are split (and a series refused)
    before the first is read."""
    folder = Path(folder)
    uid, members, multi = _series_members(folder, None, False)
    for part in split_volumes(members, uid):
        yield (part, *_read_volume(folder, uid, part.members, multi, None, False, keep_headers, True))


def _series_members(folder: Path, series_uid: str | None, progress: bool) -> tuple[str, list, MultiFrameCT | None]:
    """The UID and images (frame views of one Enhanced CT) of the series to read, checked file by file."""
    uid, members = pick_series(folder, scan_folder(folder, progress), series_uid)
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
    return uid, members, multi


def _read_volume(folder: Path, uid: str, members: list, multi: MultiFrameCT | None, case_id: str | None,
                 progress: bool, keep_headers: bool, warn_gaps: bool) -> tuple[Volume, DicomSeriesInfo]:
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
