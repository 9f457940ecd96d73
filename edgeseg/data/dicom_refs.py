"""DicomSeriesInfo: where a DICOM volume came from, for the writers and readers that refer back to it.

A DICOM SEG references the images it segments by SOP Instance UID, and for a multi-frame source
(an Enhanced CT file) by frame number too; this records both in the order the reader stacked the
slices, and maps arrays between the Volume's LPS layout and that stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeseg.errors import require
from edgeseg.progress import progress_bar

nio = require("nibabel.orientations", "io", "reading DICOM series")
pydicom = require("pydicom", "io", "reading DICOM series")

_LPS = nio.axcodes2ornt(("L", "P", "S"))


@dataclass(frozen=True)
class DicomSeriesInfo:
    """Where a DICOM volume came from, in the order the slices were stacked.

    ``files`` and ``sop_instance_uids`` are in acquisition-stack order: ascending position
    along the slice normal (row cosine x column cosine); for a multi-frame file, see
    ``frame_numbers``. :meth:`to_source_layout` maps an
    array in the Volume's LPS layout back to that stack, ``[slice, row, column]``, so that
    ``to_source_layout(mask)[k]`` is the mask drawn on the pixels of ``files[k]``.
    """

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    # nibabel orientation (axis, flip) of the stack's (column, row, slice) axes in RAS terms
    source_orientation: tuple[tuple[float, float], ...]
    # The headers the series was read with, pixel data dropped, in stack order, where the reader
    # was asked to keep them (``keep_headers``): a DICOM SEG copies from them, and reading 600
    # files a second time took a third of writing one.
    headers: tuple[pydicom.Dataset, ...] | None = field(default=None, compare=False, repr=False)
    # A series held in one multi-frame file (an Enhanced CT): ``files`` and ``sop_instance_uids``
    # name that one file, and this gives the frame number (1-based) of each stack slice, in stack
    # order. None for a series of single-frame slices, one file per stack slice.
    frame_numbers: tuple[int, ...] | None = None

    @property
    def num_slices(self) -> int:
        """Slices in the stack: frames of a multi-frame file, else files."""
        return len(self.frame_numbers) if self.frame_numbers is not None else len(self.files)

    def to_frame_order(self, stack: np.ndarray) -> np.ndarray:
        """A stack-order array [slice, row, col] in the source's own order: for a multi-frame
        file, its slices in ascending frame number (``result[n - 1]`` the slice of frame ``n``
        where the volume is the whole file, not one of several it holds); a single-frame series'
        stack as it is."""
        if self.frame_numbers is None:
            return stack
        return stack[np.argsort(self.frame_numbers)]

    def to_source_layout(self, array_zyx: np.ndarray) -> np.ndarray:
        """Map a (Z, Y, X) array in the Volume's layout to the source stack [slice, row, col]."""
        back = nio.ornt_transform(_LPS, np.asarray(self.source_orientation))
        stack_xyz = nio.apply_orientation(np.asarray(array_zyx).transpose(2, 1, 0), back)
        return np.ascontiguousarray(stack_xyz.transpose(2, 1, 0))

    def from_source_layout(self, stack: np.ndarray) -> np.ndarray:
        """Map a source-stack array [slice, row, col] to the Volume's (Z, Y, X) LPS layout.

        The inverse of :meth:`to_source_layout`: ``stack[k]`` holds values drawn on the pixels
        of ``files[k]``, e.g. the frames of a DICOM SEG picked by ``sop_instance_uids``.
        """
        forward = nio.ornt_transform(np.asarray(self.source_orientation), _LPS)
        lps_xyz = nio.apply_orientation(np.asarray(stack).transpose(2, 1, 0), forward)
        return np.ascontiguousarray(lps_xyz.transpose(2, 1, 0))

    def load_datasets(self, progress: bool = False) -> list[pydicom.Dataset]:
        """The source headers (without pixels), in stack order, e.g. for highdicom: those the
        series was read with where kept (the same objects each call), else read again."""
        if self.headers is not None:
            return list(self.headers)
        files = progress_bar(self.files, desc="reading source headers", unit="file", shown=progress)
        return [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
