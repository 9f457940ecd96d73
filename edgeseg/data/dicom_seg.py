"""DICOM SEG label maps: find SEG files and read one onto the CT series it segments.

A SEG's frames are drawn on the pixels of the source slices they reference, so frames are
picked by SOPInstanceUID in the series' stack order (``DicomSeriesInfo.sop_instance_uids``;
for an Enhanced CT source, by its frame numbers, ``DicomSeriesInfo.frame_numbers``)
and mapped into the Volume's LPS layout the same way the CT pixels were. Label values are the
SEG's segment numbers. highdicom (extra "dicom") decodes the frames; pydicom alone checks
references and geometry first, so a SEG for another series fails with its UIDs named.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require

pydicom = require("pydicom", "io", "reading DICOM SEG files")
from pydicom.filereader import read_file_meta_info  # noqa: E402

from edgeseg.data.dicom import SEGMENTATION_SOP_CLASS, DicomSeriesInfo, looks_like_dicom
from edgeseg.data.dicom_multiframe import MultiFrameCT
from edgeseg.data.dicom_values import dicom_numbers, one_line
from edgeseg.data.volume import Volume
from edgeseg.limits import check_dims, check_volume

# SEG and CT positions are decimal strings re-formatted by each writer (dcmqi writes
# -1.286900e+02 for -128.690002); a hundredth of a mm is far below any CT pixel.
POSITION_TOLERANCE_MM = 1e-2
# Direction cosines and pixel spacings written by two tools agree to about 1e-6.
ORIENTATION_TOLERANCE = 1e-4


def is_seg_file(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP class is Segmentation Storage (reads the file meta only)."""
    path = Path(path)
    if not path.is_file() or not looks_like_dicom(path):
        return False
    try:
        meta = read_file_meta_info(path)
        media_class = str(meta.get("MediaStorageSOPClassUID", ""))
    except Exception:  # noqa: BLE001 - pydicom raises many types for corrupt file meta
        return False  # no readable file meta: an old-style or broken file, never a SEG (SEG postdates Part 10)
    return media_class == SEGMENTATION_SOP_CLASS


def find_seg_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM SEG files directly inside ``folder`` (hidden files skipped), sorted by name."""
    return [p for p in sorted(Path(folder).iterdir()) if not p.name.startswith(".") and is_seg_file(p)]


def seg_referenced_series(path: str | os.PathLike) -> tuple[str, ...]:
    """SeriesInstanceUIDs the SEG at ``path`` lists in its ReferencedSeriesSequence."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
        raise DataError(f"cannot read DICOM SEG {path}: {one_line(exc)}") from exc
    return _referenced_series(header)


def _referenced_series(seg: pydicom.Dataset) -> tuple[str, ...]:
    return tuple(str(item.get("SeriesInstanceUID", "")) for item in seg.get("ReferencedSeriesSequence", []))


def _frame_value(seg: pydicom.Dataset, index: int, group: str, attribute: str):
    """An attribute of frame ``index`` from its per-frame functional group, else the shared one."""
    candidates = [seg.PerFrameFunctionalGroupsSequence[index]]
    if "SharedFunctionalGroupsSequence" in seg:
        candidates.append(seg.SharedFunctionalGroupsSequence[0])
    for groups in candidates:
        if group in groups and attribute in groups[group][0]:
            return groups[group][0][attribute].value
    return None


def _frame_sources(seg: pydicom.Dataset, index: int) -> list[pydicom.Dataset]:
    frame = seg.PerFrameFunctionalGroupsSequence[index]
    return [source for derivation in frame.get("DerivationImageSequence", [])
            for source in derivation.get("SourceImageSequence", [])]


def _num_frames(seg: pydicom.Dataset) -> int:
    return len(seg.get("PerFrameFunctionalGroupsSequence", []))


# (functional group, attribute shared by SEG frame and CT slice, tolerance)
_FRAME_GEOMETRY = (
    ("PlanePositionSequence", "ImagePositionPatient", POSITION_TOLERANCE_MM),
    ("PlaneOrientationSequence", "ImageOrientationPatient", ORIENTATION_TOLERANCE),
    ("PixelMeasuresSequence", "PixelSpacing", ORIENTATION_TOLERANCE),
)


def _source_slices(refs: DicomSeriesInfo, headers: list[pydicom.Dataset]) -> dict:
    """(SOP Instance UID, frame number or None) -> (name for messages, header holding the slice's
    position, orientation and pixel spacing): each file of a single-frame series, each frame
    of a multi-frame one."""
    if refs.frame_numbers is None:
        return {(uid, None): pair for uid, pair in zip(refs.sop_instance_uids, zip(refs.files, headers))}
    views = MultiFrameCT(refs.files[0], headers[0]).views
    return {(refs.sop_instance_uids[0], number): views[number - 1] for number in refs.frame_numbers}


def _referenced_frames(source: pydicom.Dataset) -> list[int | None]:
    numbers = source.get("ReferencedFrameNumber")
    if numbers is None or numbers == "" or (isinstance(numbers, (list, tuple, pydicom.multival.MultiValue)) and not numbers):
        return [None]  # absent or empty: the whole instance
    return [int(n) for n in (numbers if isinstance(numbers, (list, tuple, pydicom.multival.MultiValue)) else [numbers])]


def _check_frame_geometry(path: Path, seg: pydicom.Dataset, sources: dict, multi_frame: dict[str, Path]) -> None:
    """Every frame drawn on one of our slices (or frames, :func:`_source_slices`) must lie on that
    slice's pixel grid. ``multi_frame``: SOP Instance UID -> file of a multi-frame source, whose
    frames a SEG frame must reference by number; each SEG frame must then be drawn on one of them.

    highdicom only indexes by source instance when SpatialLocationsPreserved is YES, which
    many writers (dcmqi among them) leave out; the geometry is compared here instead.
    """
    for index in range(_num_frames(seg)):
        placed = False
        for source, number in ((s, n) for s in _frame_sources(seg, index) for n in _referenced_frames(s)):
            key = (str(source.get("ReferencedSOPInstanceUID", "")), number)
            if key[0] in multi_frame and key not in sources:
                # which frame of the file it is drawn on cannot be told; read as if on none, it would vanish
                raise DataError(f"SEG {path} frame {index + 1} references {multi_frame[key[0]].name} "
                                + ("without ReferencedFrameNumber; a frame drawn on a multi-frame image names its frame"
                                   if number is None else f"frame {number}, but that file has frames 1..{len(sources)}"))
            if key not in sources:
                continue
            placed = True
            file, ct = sources[key]
            if str(source.get("SpatialLocationsPreserved", "")).upper() == "NO":
                raise DataError(f"SEG {path} frame {index + 1} is not drawn on the pixels of {file} "
                                f"(SpatialLocationsPreserved NO); edgeseg does not resample SEGs")
            for group, attribute, tolerance in _FRAME_GEOMETRY:
                value = _frame_value(seg, index, group, attribute)
                if value is None or attribute not in ct:
                    continue
                seg_value = np.asarray(value, dtype=np.float64)
                ct_value = np.asarray(ct[attribute].value, dtype=np.float64)
                if seg_value.shape != ct_value.shape or not np.allclose(seg_value, ct_value, atol=tolerance):
                    raise DataError(
                        f"SEG {path} frame {index + 1} has {attribute} {seg_value.tolist()} but its "
                        f"source {file} has {ct_value.tolist()}; the SEG is not on this series' grid"
                    )
        if multi_frame and not placed:
            # a series held in one file has no other image: a frame drawn elsewhere would vanish unread
            file = next(iter(multi_frame.values()))
            named = sorted({str(s.get("ReferencedSOPInstanceUID", "")) for s in _frame_sources(seg, index)})
            raise DataError(f"SEG {path} frame {index + 1} is drawn on {', '.join(named) or 'no image'}, not on "
                            f"{file.name} (SOP Instance UID {next(iter(multi_frame))}), the one file of its series")


def _check_references(path: Path, seg: pydicom.Dataset, volume: Volume, refs: DicomSeriesInfo,
                      first_ct: pydicom.Dataset) -> None:
    series = _referenced_series(seg)
    if refs.series_instance_uid not in series:
        raise DataError(f"SEG {path} does not reference series {refs.series_instance_uid} of "
                        f"{volume.case_id}; it references {', '.join(series) or 'no series'}")
    referenced = {str(source.get("ReferencedSOPInstanceUID", ""))
                  for index in range(_num_frames(seg)) for source in _frame_sources(seg, index)}
    if not referenced & set(refs.sop_instance_uids):
        what = (f"the {len(refs.sop_instance_uids)} slices" if refs.frame_numbers is None else
                f"{refs.files[0].name} (SOP Instance UID {refs.sop_instance_uids[0]}), the one file")
        raise DataError(f"SEG {path} references none of {what} of series {refs.series_instance_uid}")
    size, ct_size = (int(seg.Rows), int(seg.Columns)), (int(first_ct.Rows), int(first_ct.Columns))
    if size != ct_size:
        raise DataError(f"SEG {path} frames are {size[0]}x{size[1]} pixels but the slices of "
                        f"{volume.case_id} are {ct_size[0]}x{ct_size[1]}")


def _check_seg_size(path: Path) -> None:
    """Refuse a SEG whose header claims more frames or pixels than the limits, or than it
    describes, before highdicom decodes (and allocates) anything."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
        raise DataError(f"cannot read DICOM SEG {path}: {one_line(exc)}") from None
    rows, columns, frames = (int(dicom_numbers(header, field, path, 1)[0])
                             for field in ("Rows", "Columns", "NumberOfFrames"))
    check_dims((frames, rows, columns), f"DICOM SEG {path}", "fields NumberOfFrames, Rows, Columns")
    check_volume((frames, rows, columns), f"DICOM SEG {path}")
    described = _num_frames(header)
    if frames != described:
        raise DataError(f"DICOM SEG {path}: field NumberOfFrames is {frames} but the file describes {described} frames")


def read_seg_label_map(path: str | os.PathLike, volume: Volume, refs: DicomSeriesInfo) -> np.ndarray:
    """Read the DICOM SEG at ``path`` as a (Z, Y, X) uint8 label map aligned to ``volume``.

    ``refs`` is the DicomSeriesInfo of the CT series ``volume`` was read from; the SEG must
    reference that series and lie on its pixel grid. A voxel's value is the number of the
    segment it belongs to (0 = none); overlapping segments and segment numbers above 255 are
    refused, as is a FRACTIONAL SEG whose values are not all 0 or 1.
    """
    path = Path(path)
    hd = require("highdicom", "dicom", "reading DICOM SEG label maps")
    _check_seg_size(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - highdicom and pydicom raise many types for bad files
        raise DataError(f"cannot read DICOM SEG {path}: {one_line(exc)}") from exc
    headers = refs.load_datasets()
    _check_references(path, seg, volume, refs, headers[0])
    multi_frame = {} if refs.frame_numbers is None else {refs.sop_instance_uids[0]: refs.files[0]}
    _check_frame_geometry(path, seg, _source_slices(refs, headers), multi_frame)
    numbers = [int(n) for n in seg.segment_numbers]
    if max(numbers, default=0) > 255:
        raise DataError(f"SEG {path} has segment number {max(numbers)}; label maps hold 0..255")
    options = dict(combine_segments=True, relabel=False,
                   ignore_spatial_locations=True,  # compared by _check_frame_geometry instead
                   assert_missing_frames_are_empty=True,  # writers often omit frames with no segment
                   dtype=np.uint8)
    try:
        if refs.frame_numbers is None:
            stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=list(refs.sop_instance_uids), **options)
        else:  # a multi-frame source: its frames in stack order
            stack = seg.get_pixels_by_source_frame(refs.sop_instance_uids[0], list(refs.frame_numbers), **options)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - highdicom raises many types for a malformed SEG
        raise DataError(f"cannot map SEG {path} onto {volume.case_id}: {one_line(exc)}") from None
    label = refs.from_source_layout(stack)
    if label.shape != volume.hu.shape:
        raise DataError(f"SEG {path} maps to shape {label.shape} but {volume.case_id} has shape "
                        f"{volume.hu.shape}; refs do not describe this volume")
    return label.astype(np.uint8, copy=False)
