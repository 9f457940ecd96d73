"""Enhanced CT: one multi-frame file holding a whole series, read frame by frame.

An Enhanced CT Image (and a Legacy Converted Enhanced CT Image) keeps what a single-frame slice
holds in its own header in functional groups instead: each frame's position, orientation, pixel
size and rescale come from its item of the Per-frame Functional Groups Sequence, or from the
Shared Functional Groups Sequence where they are the same for every frame. :class:`MultiFrameCT`
turns each frame into a view that looks like a single-frame slice's header (its ``PlanePosition``
as ``ImagePositionPatient``, its ``PixelValueTransformation`` as ``RescaleSlope`` ...), so the
series reader (:mod:`edgeseg.data.dicom`) sorts, checks and stacks the frames exactly as it does
slices, and decodes each frame's pixels on its own. What only a multi-frame file can get wrong
is refused here, in one line naming the attribute and the frame: a functional group missing or
given twice, a dimension other than position, stack or time taking several values, a
concatenation split over files. Each view carries its frame's StackID, InStackPositionNumber and
TemporalPositionIndex, so a file holding several stacks or temporal positions is split into its
volumes by the rule single-frame series are split by (:mod:`edgeseg.data.dicom_volumes`), which
also refuses frames at one position with nothing to tell them apart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgeseg.data.dicom_slice import MULTI_FRAME_CT_CLASSES, check_decoder, slice_size
from edgeseg.data.dicom_values import dicom_numbers, one_line
from edgeseg.errors import DataError, require
from edgeseg.limits import check_volume

pydicom = require("pydicom", "io", "reading DICOM series")
log = logging.getLogger(__name__)

# SOP classes whose frames carry their geometry and rescale in functional groups.
ENHANCED_CT_CLASSES = MULTI_FRAME_CT_CLASSES
# Functional group -> the attributes of its one item a frame's view takes (True: required).
FRAME_GROUPS = {
    "PlanePositionSequence": {"ImagePositionPatient": True},
    "PlaneOrientationSequence": {"ImageOrientationPatient": True},
    "PixelMeasuresSequence": {"PixelSpacing": True, "SliceThickness": False, "SpacingBetweenSlices": False},
    "PixelValueTransformationSequence": {"RescaleSlope": False, "RescaleIntercept": False, "RescaleType": False},
}
# File-level attributes every frame's view carries: what its pixels are and whose they are.
FILE_LEVEL = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID",
              "Modality", "BodyPartExamined", "Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation",
              "PixelPaddingValue", "PixelPaddingRangeLimit")
# Dimensions that place a frame in space, within one volume; any other (an energy, an acquisition)
# that takes several values makes the frames several volumes no rule here tells apart.
SPATIAL_DIMENSIONS = frozenset({"ImagePositionPatient", "StackID", "InStackPositionNumber", "SliceLocation"})
# Frame Content attributes a view carries: which stack, place in it, and time the frame is of
# (edgeseg.data.dicom_volumes splits the frames into volumes by them).
FRAME_CONTENT = ("StackID", "InStackPositionNumber", "TemporalPositionIndex")


def is_multiframe(dataset: pydicom.Dataset, path: Path) -> bool:
    """True for an image that holds several frames or is of an Enhanced CT class."""
    (frames,) = dicom_numbers(dataset, "NumberOfFrames", path, 1, default=(1.0,))
    return frames > 1 or str(dataset.get("SOPClassUID", "")) in ENHANCED_CT_CLASSES \
        or "PerFrameFunctionalGroupsSequence" in dataset


def frame_label(path: Path, number: int) -> Path:
    """How frame ``number`` (1-based, as DICOM counts frames) of ``path`` is named in messages."""
    return path.with_name(f"{path.name}, frame {number}")


class MultiFrameCT:
    """The frames of one Enhanced CT file as single-frame views, in the file's frame order.

    ``views`` is a list of (label, dataset) pairs, the label naming file and frame
    (:func:`frame_label`) and the dataset holding the frame's position, orientation, pixel
    spacing, thickness and rescale as a single-frame slice would, with the file's pixel
    description. :meth:`frames` decodes the frames one by one; :meth:`frame_number` tells a
    view's frame.
    """

    def __init__(self, path: Path, dataset: pydicom.Dataset) -> None:
        self.path, self.dataset = path, dataset
        sop_class = str(dataset.get("SOPClassUID", ""))
        (count,) = dicom_numbers(dataset, "NumberOfFrames", path, 1, default=(1.0,))
        if sop_class not in ENHANCED_CT_CLASSES:
            raise DataError(f"{path} is a multi-frame image ({count:g} frames) of SOP class {sop_class or '(none)'}, "
                            f"without per-frame geometry; edgeseg reads Enhanced CT multi-frame files and series of "
                            f"single-frame CT slices: convert it, e.g. with dcm2niix to NIfTI")
        if "ConcatenationUID" in dataset:
            raise DataError(f"{path} is one part of a concatenation (field ConcatenationUID "
                            f"{dataset.ConcatenationUID}); edgeseg reads an Enhanced CT held whole in one file")
        per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
        if per_frame is None:
            raise DataError(f"{path} is an {ENHANCED_CT_CLASSES[sop_class]} image without "
                            f"PerFrameFunctionalGroupsSequence; its frames have no geometry")
        if count != int(count) or count < 1 or len(per_frame) != count:
            raise DataError(f"{path}: field NumberOfFrames is {count:g} but PerFrameFunctionalGroupsSequence has "
                            f"{len(per_frame)} items; a file describes each of its frames once")
        rows, columns = slice_size(dataset, path)
        check_volume((len(per_frame), rows, columns), f"DICOM file {path}")
        shared = dataset.get("SharedFunctionalGroupsSequence") or [pydicom.Dataset()]
        if len(shared) != 1:
            raise DataError(f"{path}: SharedFunctionalGroupsSequence has {len(shared)} items, expected one")
        self._fallback = self._top_level_rescale(per_frame, shared[0])
        self.views = [(frame_label(path, k + 1), self._view(k + 1, item, shared[0]))
                      for k, item in enumerate(per_frame)]
        self._numbers = {id(view): k + 1 for k, (_, view) in enumerate(self.views)}
        self._frame_content(per_frame)

    def _view(self, number: int, frame: pydicom.Dataset, shared: pydicom.Dataset) -> pydicom.Dataset:
        label = frame_label(self.path, number)
        view = pydicom.Dataset()
        for name in FILE_LEVEL:
            if name in self.dataset:
                view[name] = self.dataset[name]
        for group, attributes in FRAME_GROUPS.items():
            item = _group_item(label, group, frame, shared, self._fallback.get(group))
            for name, required in attributes.items():
                if name in item:
                    view[name] = item[name]
                elif required:
                    raise DataError(f"DICOM file {label}: {group} lacks {name}")
        return view

    def _top_level_rescale(self, per_frame, shared: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
        """{group: item} standing in for a Pixel Value Transformation the file lacks everywhere
        while it gives RescaleSlope / RescaleIntercept at the top level, as some converters write
        (not conformant: an Enhanced CT keeps them in the functional groups). dcm2niix and dcm4che
        read those values for every frame; so does this, with one warning naming them."""
        group = "PixelValueTransformationSequence"
        if group in shared or any(group in item for item in per_frame) or not (
                "RescaleSlope" in self.dataset or "RescaleIntercept" in self.dataset):
            return {}
        item = pydicom.Dataset()
        for name in FRAME_GROUPS[group]:
            if name in self.dataset:
                item[name] = self.dataset[name]
        log.warning("%s has no %s in its functional groups but %s at the top level; those are used for every "
                    "frame", self.path, group, ", ".join(f"{name} {item[name].value}" for name in item.dir()))
        return {group: item}

    def _frame_content(self, per_frame) -> None:
        """Give each view its frame's FRAME_CONTENT (from its FrameContentSequence, else from its
        DimensionIndexValues where the attribute is a dimension); refuse a dimension outside
        SPATIAL_DIMENSIONS and FRAME_CONTENT that takes several values: volumes nothing splits."""
        contents = [(item.get("FrameContentSequence") or [None])[0] for item in per_frame]
        names = self._dimension_names()
        for index, name in enumerate(names):
            if name in SPATIAL_DIMENSIONS or name in FRAME_CONTENT:
                continue
            values = {_dimension_value(c, index) for c in contents}
            if len(values) > 1:
                raise DataError(f"{self.path}: its frames take {len(values)} values of the dimension {name} "
                                f"(DimensionIndexSequence item {index + 1}), so they are several volumes, and "
                                f"edgeseg splits a file by stack and temporal position only")
        for content, (_, view) in zip(contents, self.views):
            for name in FRAME_CONTENT:
                if content is not None and name in content:
                    view[name] = content[name]
                elif name in names and _dimension_value(content, names.index(name)).isdigit():
                    value = int(_dimension_value(content, names.index(name)))
                    setattr(view, name, str(value) if name == "StackID" else value)

    def _dimension_names(self) -> list[str]:
        names = []
        for item in self.dataset.get("DimensionIndexSequence", []):
            pointer = item.get("DimensionIndexPointer")
            names.append("?" if pointer is None else pydicom.datadict.keyword_for_tag(pointer) or str(pointer))
        return names

    def frame_number(self, view: pydicom.Dataset) -> int:
        """The frame number (1-based) of one of :attr:`views`' datasets."""
        return self._numbers[id(view)]

    def stack_order(self, views: list[tuple[Path, pydicom.Dataset]]) -> list[int]:
        """Indices into ``views`` (sorted along the normal) in the file's frame order: the order
        :meth:`frames` yields their pixels in."""
        return sorted(range(len(views)), key=lambda k: self.frame_number(views[k][1]))

    def frames(self, rows: int, columns: int, numbers: set[int] | None = None) -> Iterator[np.ndarray]:
        """The decoded pixels of each frame (``numbers``: of those frames alone, one volume of
        the file), in frame order, each refused unless one ``rows`` x ``columns`` grey-level
        image (as :func:`~edgeseg.data.dicom_slice.slice_pixels`). Read from the file one frame
        at a time: the file's pixel bytes are never held whole."""
        from pydicom.pixels import iter_pixels

        check_decoder(self.dataset, self.path)
        number = 0
        try:
            with contextlib.closing(iter_pixels(self.path)) as pixels:  # the file closed at once on a refusal
                for number, frame in enumerate(pixels, start=1):
                    if frame.shape != (rows, columns) or frame.dtype.kind not in "biuf":
                        raise DataError(f"{frame_label(self.path, number)}: pixel data decodes to {frame.dtype} "
                                        f"{list(frame.shape)}, expected one {rows}x{columns} grey-level frame "
                                        f"(SamplesPerPixel, BitsAllocated?)")
                    if numbers is None or number in numbers:
                        yield frame
        except (DataError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise many types for bad data
            raise DataError(f"cannot decode pixel data of {frame_label(self.path, number + 1)} (truncated?): "
                            f"{one_line(exc)}") from None
        if number < len(self.views):
            raise DataError(f"cannot decode pixel data of {frame_label(self.path, number + 1)} (truncated?): "
                            f"the pixel data holds {number} of {len(self.views)} frames")



def _group_item(label: Path, group: str, frame: pydicom.Dataset, shared: pydicom.Dataset,
                fallback: pydicom.Dataset | None = None) -> pydicom.Dataset:
    """The one item of functional group ``group`` for a frame: from its per-frame groups or the
    shared ones, never both, never neither (unless a ``fallback`` stands in for neither)."""
    places = [name for name, groups in (("per-frame", frame), ("shared", shared)) if group in groups]
    if not places and fallback is not None:
        return fallback
    if not places:
        raise DataError(f"DICOM file {label} has no {group} in its per-frame or shared functional groups")
    if len(places) > 1:
        raise DataError(f"DICOM file {label} has {group} in both its per-frame and shared functional groups; "
                        f"which one holds cannot be told")
    items = (frame if places[0] == "per-frame" else shared)[group].value
    if len(items) != 1:
        raise DataError(f"DICOM file {label}: {group} ({places[0]}) has {len(items)} items, expected one")
    return items[0]


def _dimension_value(content, index: int) -> str:
    if content is None or "DimensionIndexValues" not in content:
        return ""
    values = content.DimensionIndexValues
    values = list(values) if isinstance(values, (list, tuple, pydicom.multival.MultiValue)) else [values]
    return str(values[index]) if index < len(values) else ""


def multiframe_series(members: list[tuple[Path, pydicom.Dataset]], uid: str) -> MultiFrameCT | None:
    """The :class:`MultiFrameCT` of a series held in one multi-frame file; None for a series of
    single-frame slices. A multi-frame file beside other files of its series is refused: which
    of them make the volume cannot be told."""
    multi = [(path, dataset) for path, dataset in members if is_multiframe(dataset, path)]
    if not multi:
        return None
    if len(members) > 1:
        others = [path.name for path, _ in members if path != multi[0][0]]
        raise DataError(f"series {uid}: {multi[0][0]} is a multi-frame image, but {len(others)} other file(s) of the "
                        f"series lie beside it ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); a "
                        f"series is read from one multi-frame file or from single-frame slices, not both")
    return MultiFrameCT(*multi[0])
