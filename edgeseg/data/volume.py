"""Volume: one CT case as HU in the LPS display layout, with geometry and an optional label map."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from edgeseg.errors import DataError


@dataclass
class Volume:
    """One CT case.

    ``hu`` is indexed ``hu[z, y, x]``: x runs to the patient's left, y to posterior, z to
    superior (LPS), so ``hu[k]`` is an axial slice as a radiologist views it. Readers convert
    every source to this layout.

    Args:
        hu: (Z, Y, X) float32 Hounsfield units.
        spacing: (z, y, x) voxel size in mm; slice folders without geometry use 1.0. z is the
            distance between slice planes, which for a gantry-tilted series is shorter than the
            slanted step between slice positions (see :func:`~edgeseg.data.grid.spacing_from_affine`);
            the product is the voxel's volume.
        affine: 4x4 matrix mapping a voxel index (x, y, z, 1) of ``hu`` to RAS+ millimetres
            (the NIfTI convention), so writers can place outputs in the source's world.
        case_id: patient / volume identifier; splits are made on it, never on slices.
        label: optional (Z, Y, X) uint8 label map with the source's own label values.
        label_names: the name of each label value, where the label file names them (a 3D
            Slicer segmentation's segments), else None; classes are then matched by name.
        body_part: a DICOM series' BodyPartExamined (e.g. "CHEST"), "" where not known.
        hu_range: the HU range the source can represent, e.g. (0, 255) for slices stored as
            "pixel = HU clipped to [0, 255]"; None for full-range scanner data.
        modality: DICOM modality, "CT" for everything edgeseg segments.
        source: where the data came from (path), for messages.
        slice_ids: one name per slice (file stem or instance number), for reports.
        contiguous: False for stacks of unrelated 2-D slices (slice folders), whose surface
            distances are only meaningful within each slice.
        uneven_gaps: (smallest, largest) distance in mm between neighbouring slices of a DICOM
            series whose slices are not evenly spaced (a missing slice), else None. ``affine``
            then spaces them evenly from the first to the last, so it misplaces the slices
            after a gap: NIfTI output refuses such a volume.
        off_line: (mm, file name) of the slice of a DICOM series whose position lies furthest,
            across the slice normal, from the straight line between the first and last positions
            (each compared at its own height along the normal: a missing slice moves none off it),
            where over a tenth of a pixel (slices from two reconstruction centres), else None.
            ``affine`` places that slice's pixels that far off: NIfTI output refuses it too.
        spacing_known: False where ``spacing`` is a placeholder (slice folders, NPY arrays, PNG/JPG
            slices read without one), so the training FOV check (``edgeseg.data.field_of_view``) skips it.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    case_id: str
    label: np.ndarray | None = None
    hu_range: tuple[float, float] | None = None
    modality: str = "CT"
    source: str = ""
    slice_ids: list[str] = field(default_factory=list)
    contiguous: bool = True
    uneven_gaps: tuple[float, float] | None = None
    off_line: tuple[float, str] | None = None
    label_names: dict[int, str] | None = None
    body_part: str = ""
    spacing_known: bool = True

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise DataError(f"{self.case_id}: HU array must be (Z, Y, X), got shape {self.hu.shape}")
        if self.label is not None and self.label.shape != self.hu.shape:
            raise DataError(
                f"{self.case_id}: label shape {self.label.shape} differs from image shape {self.hu.shape}"
            )
        if not self.slice_ids:
            self.slice_ids = [str(k) for k in range(self.hu.shape[0])]

    def content_sha256(self) -> str:
        """sha256 of what the case holds as read: the HU and label arrays (their dtype, shape and
        values) and the voxel spacing, not the file it came from. The same case read from a NIfTI
        file, its DICOM series or a copy hashes alike, so a run, an evaluation and a data set on
        another machine can be matched case by case."""
        digest = hashlib.sha256()
        for array in (self.hu, self.label):
            if array is None:
                digest.update(b"none;")
                continue
            # little-endian C order, so the hash does not depend on how the reader laid the array out
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            digest.update(f"{data.dtype.str}{list(data.shape)};".encode())
            digest.update(memoryview(data).cast("B"))
        digest.update(repr([float(v) for v in self.spacing]).encode())
        if self.label_names:  # a renamed segment is another class
            digest.update(repr(sorted(self.label_names.items())).encode())
        return digest.hexdigest()

    @property
    def num_slices(self) -> int:
        return int(self.hu.shape[0])

    @property
    def axes_mm(self) -> np.ndarray:
        """3x3 matrix whose column k is the step in mm of array axis k of ``hu[z, y, x]``.

        Unlike ``spacing`` it keeps a sheared grid's shear (a gantry-tilted CT, whose slices are
        offset in-plane as well as stacked), so 3-D distances can be measured where the voxels lie.
        """
        return np.asarray(self.affine, dtype=np.float64)[:3, :3][:, ::-1].copy()


def cases_sha256(case_hashes: dict[str, str]) -> str:
    """One sha256 for a set of cases: of their ids and :meth:`Volume.content_sha256`, in id order,
    so it does not depend on the order the cases were read in."""
    text = "".join(f"{case_id}\t{digest}\n" for case_id, digest in sorted(case_hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def default_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine for an LPS-ordered (x, y, z) grid at the origin: x and y axes point to -R, -A."""
    sz, sy, sx = spacing
    return np.diag([-sx, -sy, sz, 1.0])


# Label voxels counted per step: np.bincount first converts its whole input to int64, eight
# times a uint8 label map (1.2 GB for 600 slices of 512 x 512).
COUNT_STEP = 1 << 20


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """Voxels of each value 0..max in a label map of non-negative integers (as ``np.bincount``
    of it, at least ``minlength`` long), counted a million voxels at a time."""
    flat = np.asarray(labels).ravel()
    counts = np.zeros(minlength, dtype=np.int64)
    for start in range(0, flat.size, COUNT_STEP):
        part = np.bincount(flat[start:start + COUNT_STEP])
        if len(part) > len(counts):
            counts = np.pad(counts, (0, len(part) - len(counts)))
        counts[:len(part)] += part
    return counts
