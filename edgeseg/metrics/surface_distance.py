"""Distances, in mm, from each surface voxel of one mask to the nearest surface voxel of another.

HD95 (:func:`edgeseg.metrics.hd95`) is a percentile of these distances. Two exact ways to find them:

* the Euclidean feature transform (``scipy.ndimage.distance_transform_edt``) over the bounding
  box of the two masks: fast, but it holds an int32 index per axis for every voxel of the box, and
  the box of a poor prediction is the whole volume (about 16 bytes a voxel at the peak in 3-D;
  asking scipy for the distances too, as this module once did, took 48);
* a KD-tree over the surface voxels (``scipy.spatial.cKDTree``): memory in proportion to the
  surfaces, found slab by slab, but slower where the surfaces are large.

The feature transform is used while its box fits a budget (:func:`feature_transform_budget`) or
costs less than the tree would; sheared grids (gantry tilt) always take the tree, as the
transform knows only axis-aligned spacing. Either way each distance is computed from the integer
step between a voxel and its nearest surface voxel with the arithmetic scipy uses for its
distances, so the two ways agree to the last bit except where two surface voxels are equally near.
"""

from __future__ import annotations

import numpy as np

from edgeseg.errors import require

# Peak bytes per voxel of the box on the feature-transform path, per array axis and fixed: the
# int32 feature transform (4 per axis); the two surfaces, the inverted one and scipy's int8 copy.
FEATURE_TRANSFORM_BYTES = (4, 4)
# Peak bytes per surface voxel on the KD-tree path, per grid axis and fixed: int32 coordinates
# (4 per axis) and the tree's float64 copy (8 per axis); the tree's index, its nodes and a float64
# distance (about 24).
KD_TREE_BYTES = (12, 24)
# The feature transform may take this much whatever the volume ...
FEATURE_TRANSFORM_FLOOR = 64 << 20
# ... or this many bytes per voxel of the masks (the size of the int16 volume they were drawn on).
FEATURE_TRANSFORM_BYTES_PER_VOXEL = 2
# Voxels per slab when surfaces are found slab by slab for the KD-tree (each slab is eroded with
# one plane either side, so thin slabs repeat work).
SLAB_VOXELS = 1 << 20


def feature_transform_budget(voxels: int) -> int:
    """Bytes the feature transform may take on masks of ``voxels`` voxels before the KD-tree is
    considered instead."""
    return max(FEATURE_TRANSFORM_FLOOR, FEATURE_TRANSFORM_BYTES_PER_VOXEL * int(voxels))


def union_box(p: np.ndarray, t: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the voxels set in either mask (at least one must be set)."""
    # Distances only involve surface voxels, which all lie inside the union's bounding box. Found
    # axis by axis, so no union array of the whole volume is made.
    box = []
    for axis in range(p.ndim):
        others = tuple(a for a in range(p.ndim) if a != axis)
        occupied = np.flatnonzero(p.any(axis=others) | t.any(axis=others))
        box.append(slice(int(occupied[0]), int(occupied[-1]) + 1))
    return tuple(box)


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that an erosion with face connectivity removes (MONAI's surface;
    the array's border counts as outside)."""
    ndimage = require("scipy.ndimage", "train", "HD95")
    face_connectivity = ndimage.generate_binary_structure(mask.ndim, 1)
    # in place: one array of the mask's size besides the mask, not three
    found = ndimage.binary_erosion(mask, structure=face_connectivity, border_value=0)
    np.logical_not(found, out=found)
    found &= mask
    return found


def surface_distances(p: np.ndarray, t: np.ndarray, steps: np.ndarray, orthogonal: bool,
                      method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(distances of p's surface voxels to t's surface, of t's to p's), in mm, unordered.

    ``p`` and ``t`` are boolean masks of one shape, both with a voxel set; column k of ``steps``
    is the step in mm of array axis k (diagonal when ``orthogonal``: the spacing). ``method``
    "auto" chooses by memory as the module docstring says; "feature_transform" (orthogonal grids
    only) or "kd_tree" forces one.
    """
    if method not in ("auto", "feature_transform", "kd_tree"):
        raise ValueError(f"method must be auto, feature_transform or kd_tree, got {method!r}")
    if method == "feature_transform" and not orthogonal:
        raise ValueError("the feature transform measures orthogonal grids only")
    full_size = p.size
    box = union_box(p, t)
    p, t = p[box], t[box]
    # Erosion is unchanged by the crop: outside the box both masks are False, as border_value=0.
    box_bytes = p.size * (FEATURE_TRANSFORM_BYTES[0] * p.ndim + FEATURE_TRANSFORM_BYTES[1])
    if method == "feature_transform" or (
            method == "auto" and orthogonal and box_bytes <= feature_transform_budget(full_size)):
        return _by_feature_transform(p, t, np.diag(steps))
    points = _surface_points(p, t)
    tree_bytes = (len(points[0]) + len(points[2])) * (KD_TREE_BYTES[0] * steps.shape[0] + KD_TREE_BYTES[1])
    if method == "auto" and orthogonal and box_bytes <= tree_bytes:  # surfaces so large that the box is cheaper
        del points
        return _by_feature_transform(p, t, np.diag(steps))
    return _by_kd_tree(*points, steps)


def _lengths(steps: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Lengths in mm of the (ndim, n) integer steps ``delta``, as scipy's distance transform
    computes them (per axis times the spacing, squared, summed over axis 0, square root)."""
    delta = delta.astype(np.float64)
    if steps.shape[0] == steps.shape[1] and np.count_nonzero(steps - np.diag(np.diag(steps))) == 0:
        mm = delta * np.diag(steps)[:, None]
    else:
        mm = np.zeros((steps.shape[0], delta.shape[1]))
        for axis in range(delta.shape[0]):
            mm += steps[:, axis, None] * delta[axis]
    np.multiply(mm, mm, mm)
    return np.sqrt(np.add.reduce(mm, axis=0))


def _by_feature_transform(p: np.ndarray, t: np.ndarray, sampling: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    surface_p, surface_t = surface(p), surface(t)
    return (_nearest_by_feature_transform(surface_p, surface_t, sampling),
            _nearest_by_feature_transform(surface_t, surface_p, sampling))


def _nearest_by_feature_transform(source: np.ndarray, target: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    ndimage = require("scipy.ndimage", "train", "HD95")
    # The transform measures to the nearest zero, so the target surface is inverted. Only the
    # nearest indices are asked for: the distances are needed at the source's voxels alone.
    nearest = ndimage.distance_transform_edt(~target, sampling=tuple(sampling), return_distances=False,
                                             return_indices=True)
    distances = np.empty(int(np.count_nonzero(source)))
    done = 0
    # Slab by slab, so the coordinates and steps held at once stay small whatever the surface.
    for start, stop in _slabs(source):
        at = np.nonzero(source[start:stop])
        at = (at[0] + start, *at[1:])
        delta = nearest[(slice(None), *at)] - np.stack(at)
        distances[done:done + delta.shape[1]] = _lengths(np.diag(sampling), delta)
        done += delta.shape[1]
    return distances


def _slabs(mask: np.ndarray):
    """(start, stop) of consecutive slabs of about SLAB_VOXELS voxels along axis 0."""
    thickness = max(1, SLAB_VOXELS // max(1, mask[0].size))
    for start in range(0, mask.shape[0], thickness):
        yield start, min(mask.shape[0], start + thickness)


def _surface_points(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Int32 coordinates of the surface voxels of ``p`` and of ``t``, found slab by slab along
    axis 0: (p's, how many of them lead the array as on p's surface only, t's, the same for t).
    The voxels on both surfaces close each array (they are zero apart)."""
    planes = p.shape[0]
    only_p, only_t, shared = [], [], []
    for start, stop in _slabs(p):
        # One plane either side, so the erosion sees each slab voxel's face neighbours.
        low, high = max(0, start - 1), min(planes, stop + 1)
        inner = slice(start - low, stop - low)
        surface_p, surface_t = surface(p[low:high])[inner], surface(t[low:high])[inner]
        both = surface_p & surface_t
        surface_p ^= both
        surface_t ^= both
        offset = np.zeros(p.ndim, dtype=np.int32)
        offset[0] = start
        for found, mask in ((only_p, surface_p), (only_t, surface_t), (shared, both)):
            found.append(np.argwhere(mask).astype(np.int32) + offset)
        del surface_p, surface_t, both
    shared_points = np.concatenate(shared)
    # Concatenated in two steps so that the parts are freed before the whole is made twice over.
    only_p_points, only_t_points = np.concatenate(only_p), np.concatenate(only_t)
    del only_p, only_t, shared
    points_p = np.concatenate([only_p_points, shared_points])
    del only_p_points
    points_t = np.concatenate([only_t_points, shared_points])
    return points_p, len(points_p) - len(shared_points), points_t, len(points_t) - len(shared_points)


# Query points per KD-tree call: bounds the float64 coordinates, distances and indices in flight.
QUERY_CHUNK = 1 << 18


def _by_kd_tree(points_p: np.ndarray, only_p: int, points_t: np.ndarray, only_t: int,
                steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (_nearest_by_kd_tree(points_p, only_p, points_t, steps),
            _nearest_by_kd_tree(points_t, only_t, points_p, steps))


def _in_mm(points: np.ndarray, steps: np.ndarray) -> np.ndarray:
    mm = np.zeros((len(points), steps.shape[0]))
    for axis in range(points.shape[1]):
        mm += points[:, axis, None] * steps[:, axis]
    return mm


def _nearest_by_kd_tree(source: np.ndarray, only: int, target: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Distances of the ``source`` points to the nearest ``target`` point; the source points
    from ``only`` on are on the target surface too, so their distance is 0."""
    spatial = require("scipy.spatial", "train", "HD95")
    distances = np.zeros(len(source))
    if only == 0:
        return distances
    # Leaves of 128 points rather than 16: a surface voxel far from the other surface (a poor
    # prediction) visits many leaves, and the larger ones made those queries two to three times faster.
    tree = spatial.cKDTree(_in_mm(target, steps), leafsize=128, copy_data=False)
    for start in range(0, only, QUERY_CHUNK):
        chunk = source[start:min(only, start + QUERY_CHUNK)]
        nearest = tree.query(_in_mm(chunk, steps))[1]
        distances[start:start + len(chunk)] = _lengths(steps, (target[nearest] - chunk).T)
    return distances
