"""Voxel-grid geometry of an affine: voxel sizes (sheared grids included) and grid agreement.

A CT series acquired with a gantry tilt has slice planes that are tilted while the table, and so
ImagePositionPatient, steps straight along the patient: its affine is sheared, and the length of
the slice-index column is the slanted table step, not the distance between the slice planes.
Voxel sizes here are chosen so that their product is the voxel's true volume and the in-plane
sizes are the pixel sizes, whatever the shear.
"""

from __future__ import annotations

import itertools

import numpy as np

from edgeseg.errors import DataError

# Two grids agree when no voxel centre of one lies further than this fraction of the smallest
# voxel size from the same voxel of the other. ITK relates its check to the voxel size too
# (origin and spacing within 1e-6 x spacing, ImageToImageFilter's default coordinate
# tolerance), but ITK compares float64 geometry; NIfTI stores its sform in float32, whose
# rounding of a coordinate 500 mm from the isocentre is ~3e-5 mm, so 1e-6 of a 0.7 mm voxel would
# refuse a label written from the very same image. A thousandth of a voxel is 20-fold above that
# rounding and far below anything that could move a label.
GRID_TOLERANCE_VOXELS = 1e-3
# Output for viewers that keep only a rotation of a sheared grid is warned of where they would
# place a voxel further than this fraction of the smallest voxel size from where it lies.
SHEAR_WARNING_VOXELS = 0.1


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm of an affine mapping an (x, y, z) index to mm.

    For an orthogonal grid these are the lengths of the affine's index columns. For a sheared
    one (gantry tilt) the two most nearly orthogonal axes span the slice plane and keep their
    lengths, the pixel sizes; the third axis gets the distance between those planes,
    ``|det| / |a_i x a_j|``, which is what volumes (mL) and distances across slices need: the
    column's own length is the slanted step, longer by 1 / cos(tilt).
    """
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(lengths > 0):
        raise DataError(f"affine has a zero-length axis: {np.round(axes, 6).tolist()}")
    unit = axes / lengths
    pairs = sorted(itertools.combinations(range(3), 2), key=lambda ij: abs(float(unit[:, ij[0]] @ unit[:, ij[1]])))
    i, j = pairs[0]
    k = 3 - i - j
    sizes = lengths.copy()
    sizes[k] = abs(float(np.linalg.det(axes))) / float(np.linalg.norm(np.cross(axes[:, i], axes[:, j])))
    # Rounded to 1e-6 mm so float noise from DICOM positions does not show in reports.
    sx, sy, sz = (round(float(v), 6) for v in sizes)
    if not min(sx, sy, sz) > 0:  # a header's 1e-30 mm would be reported, and divided by, as 0
        raise DataError(f"affine gives a voxel size below 1e-6 mm ({sizes.tolist()} mm for x, y, z): "
                        f"{np.round(axes, 6).tolist()}")
    return (sz, sy, sx)


def squared_affine(affine: np.ndarray) -> np.ndarray:
    """``affine`` with its index axes made orthogonal as a NIfTI qform must hold them, the way
    nibabel's ``set_qform`` and ITK-based tools do: the nearest rotation of the unit axes (SVD),
    each axis keeping its length, the origin kept."""
    squared = np.asarray(affine, dtype=np.float64).copy()
    lengths = np.linalg.norm(squared[:3, :3], axis=0)
    left, _, right = np.linalg.svd(squared[:3, :3] / lengths)
    squared[:3, :3] = (left @ right) * lengths
    return squared


def shear_offset_mm(affine: np.ndarray, shape_xyz) -> float:
    """How far (mm) a viewer that keeps only :func:`squared_affine` of ``affine`` places a voxel
    of a grid of ``shape_xyz`` voxels from where ``affine`` puts it, at worst: a gantry tilt's
    shear shows here, the rounding of an oblique series' positions to a few decimals barely."""
    return grid_displacement_mm(squared_affine(affine), affine, shape_xyz)


def grid_displacement_mm(affine: np.ndarray, reference: np.ndarray, shape_xyz) -> float:
    """The largest distance in mm between a voxel centre placed by ``affine`` and the same voxel
    placed by ``reference``, over a grid of ``shape_xyz`` voxels.

    The difference of two affines maps an index linearly, so its largest length over the grid is
    at one of the grid's corners.
    """
    difference = np.asarray(affine, dtype=np.float64)[:3] - np.asarray(reference, dtype=np.float64)[:3]
    ends = [(0, max(int(n) - 1, 0)) for n in tuple(shape_xyz)[:3]]
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*ends)])
    return float(np.linalg.norm(corners @ difference.T, axis=1).max())


def check_same_grid(affine: np.ndarray, reference: np.ndarray, shape_xyz, what: str, reference_what: str) -> None:
    """Refuse ``affine`` unless every voxel centre lies within :data:`GRID_TOLERANCE_VOXELS` of the
    smallest voxel size of ``reference`` from the same voxel of ``reference``.

    The error is one line naming both grids, the largest displacement and the two affines'
    difference (the 3x4 matrix ``affine - reference``: mm per index step and mm of origin).
    """
    voxel = min(spacing_from_affine(reference))
    displacement = grid_displacement_mm(affine, reference, shape_xyz)
    if displacement <= GRID_TOLERANCE_VOXELS * voxel:
        return
    difference = np.round(np.asarray(affine, dtype=np.float64)[:3] - np.asarray(reference, dtype=np.float64)[:3], 4)
    raise DataError(
        f"{what} does not lie on the grid of {reference_what}: voxel centres up to {displacement:.3g} mm "
        f"({displacement / voxel:.3g} voxel) apart, tolerance {GRID_TOLERANCE_VOXELS:g} voxel; affine "
        f"difference label - image (RAS mm; columns: x, y, z index steps and origin) {(difference + 0.0).tolist()}"
    )


def sub_box_start(affine: np.ndarray, reference: np.ndarray, shape_xyz, reference_shape_xyz, what: str,
                  reference_what: str) -> tuple[int, int, int]:
    """The (x, y, z) voxel of ``reference`` where a grid of ``shape_xyz`` voxels placed by
    ``affine`` starts, for a grid that is a box cut out of ``reference``'s (a segmentation saved
    cropped to its content): same index steps within :data:`GRID_TOLERANCE_VOXELS` over the
    box, an origin a whole number of voxels from ``reference``'s within the same tolerance on
    each axis, and every voxel inside ``reference``'s ``reference_shape_xyz``. Anything else is
    refused in one line naming both grids."""
    affine = np.asarray(affine, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    voxel = min(spacing_from_affine(reference))
    steps_only = affine.copy()
    steps_only[:3, 3] = reference[:3, 3]
    drift = grid_displacement_mm(steps_only, reference, shape_xyz)
    if drift > GRID_TOLERANCE_VOXELS * voxel:
        difference = np.round(affine[:3, :3] - reference[:3, :3], 4) + 0.0
        raise DataError(f"{what} has other axis directions or voxel sizes than {reference_what}: its voxels drift up "
                        f"to {drift:.3g} mm ({drift / voxel:.3g} voxel) from that grid; index steps label - image "
                        f"(RAS mm; columns x, y, z) {difference.tolist()}")
    offset = np.linalg.solve(reference[:3, :3], affine[:3, 3] - reference[:3, 3])
    start = np.rint(offset)
    if np.abs(offset - start).max() > GRID_TOLERANCE_VOXELS:
        raise DataError(f"{what} starts at voxel ({', '.join(f'{v:.4g}' for v in offset)}) (x, y, z) of "
                        f"{reference_what}, not a whole number of voxels (tolerance {GRID_TOLERANCE_VOXELS:g} voxel)")
    stop = start + np.asarray(tuple(shape_xyz)[:3])
    if (start < 0).any() or (stop > np.asarray(tuple(reference_shape_xyz)[:3])).any():
        box = ", ".join(f"{axis} {int(a)}..{int(b) - 1}" for axis, a, b in zip("xyz", start, stop))
        whole = ", ".join(f"{axis} 0..{int(n) - 1}" for axis, n in zip("xyz", reference_shape_xyz))
        raise DataError(f"{what} covers voxels {box} of {reference_what}, which has {whole}: the box reaches "
                        "outside the image")
    return tuple(int(v) for v in start)
