"""Label maps from their own files (NIfTI, NRRD, DICOM SEG), aligned to a Volume that was read.

Every format is brought to the Volume's LPS layout by flipping and permuting axes only, never
by resampling: the label file must describe the Volume's own voxel grid, and its geometry is
checked against the Volume's affine so that a label for another scan, or one shifted by a
header mistake, is refused rather than silently misplaced.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from edgeseg.data.dicom import DicomSeriesInfo, looks_like_dicom
from edgeseg.data.dicom_seg import is_seg_file, read_seg_label_map
from edgeseg.data.grid import check_same_grid, sub_box_start
from edgeseg.data.gzip_stream import inflate_exact
from edgeseg.data.nifti import _label_to_uint8, _load, is_nifti_path, to_lps_layout
from edgeseg.data.slicer_seg import (check_layers, is_slicer_segmentation, merge_layers, one_layer_names,
                                    read_segments)
from edgeseg.data.volume import Volume
from edgeseg.errors import DataError, require
from edgeseg.limits import check_dims, check_volume

NRRD_SUFFIXES = (".nrrd", ".nhdr")
# the encodings whose data edgeseg reads to the end of their stream itself
COMPRESSED_NRRD = ("gzip", "gz", "bzip2", "bz2")
# NRRD world spaces edgeseg places (long names and the abbreviations the NRRD format allows),
# as the sign flip that takes a point in that space to RAS.
_NRRD_SPACE_TO_RAS = {
    "left-posterior-superior": np.array([-1.0, -1.0, 1.0]),
    "lps": np.array([-1.0, -1.0, 1.0]),
    "right-anterior-superior": np.array([1.0, 1.0, 1.0]),
    "ras": np.array([1.0, 1.0, 1.0]),
}


def read_label_file(
    path: str | os.PathLike, volume: Volume, refs: DicomSeriesInfo | None = None
) -> np.ndarray:
    """Read a label map file as a (Z, Y, X) uint8 array aligned to ``volume``'s LPS layout
    (:func:`read_named_label_file` without the names)."""
    return read_named_label_file(path, volume, refs)[0]


def attach_label_file(volume: Volume, path: str | os.PathLike, refs: DicomSeriesInfo | None = None) -> None:
    """Give ``volume`` the label map of ``path`` and the names of its segments, if it has any."""
    volume.label, volume.label_names = read_named_label_file(path, volume, refs)


def read_named_label_file(
    path: str | os.PathLike, volume: Volume, refs: DicomSeriesInfo | None = None
) -> tuple[np.ndarray, dict[int, str] | None]:
    """Read a label map file as a (Z, Y, X) uint8 array aligned to ``volume``'s LPS layout, and
    the name of each label value where the file names them (a 3D Slicer segmentation,
    ``.seg.nrrd``: :mod:`~edgeseg.data.slicer_seg`), else None.

    ``path`` is a NIfTI file (``.nii`` / ``.nii.gz``), an NRRD file (``.nrrd`` / ``.nhdr``,
    needs pynrrd) or a DICOM SEG (needs highdicom, and ``refs``: the DicomSeriesInfo of the CT
    series ``volume`` was read from, so frames land on the slices they were drawn on). NIfTI
    and NRRD grids must match ``volume``'s shape and lie on its grid after reorientation
    (:func:`~edgeseg.data.grid.check_same_grid`); label values must fit uint8 and are kept as they are (a SEG gives
    its segment numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    if is_nifti_path(path):
        data, affine = _load(path, "label")
        return _align(_label_to_uint8(data, path), affine, volume, path), None
    if path.name.lower().endswith(NRRD_SUFFIXES):
        return _read_nrrd(path, volume)
    if looks_like_dicom(path):
        if not is_seg_file(path):
            raise DataError(f"label file {path} is DICOM but not a DICOM SEG "
                            f"(SOP class 1.2.840.10008.5.1.4.1.1.66.4)")
        if refs is None:
            raise DataError(f"DICOM SEG {path} needs the CT series' references to place its frames; "
                            f"read the CT with read_dicom_series_with_refs and pass refs=")
        return read_seg_label_map(path, volume, refs), None
    raise DataError(f"cannot read label file {path}: expected .nii / .nii.gz, .nrrd / .nhdr or a DICOM SEG")


def _align(data_xyz: np.ndarray, affine_ras: np.ndarray, volume: Volume, path: Path) -> np.ndarray:
    """Reorient an (x, y, z) label array with a RAS affine onto ``volume``'s grid, or refuse."""
    label, affine = to_lps_layout(data_xyz, affine_ras, f"label {path}")
    if label.shape != volume.hu.shape:
        raise DataError(f"label {path} has shape {label.shape} (z, y, x) but {volume.case_id} "
                        f"has shape {volume.hu.shape}")
    check_same_grid(affine, volume.affine, volume.hu.shape[::-1], f"label {path}", volume.case_id)
    return label


def _read_nrrd(path: Path, volume: Volume) -> tuple[np.ndarray, dict[int, str] | None]:
    nrrd = require("nrrd", "io", "reading NRRD label files")
    try:
        with open(path, "rb") as handle:
            header = nrrd.read_header(handle)
            segments = read_segments(header, path)
            # The sizes are checked against the limits before pynrrd allocates the data.
            sizes = check_dims(np.atleast_1d(header.get("sizes", ())), f"label {path}", "NRRD field sizes")
            check_volume((int(np.prod(sizes[2:])) if len(sizes) > 2 else 1, *(sizes + (1, 1))[:2][::-1]),
                         f"label {path}")
            data = _nrrd_data(nrrd, header, handle, path, sizes)
    except (MemoryError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - pynrrd raises many types for a corrupt header or data
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read label file {path}: truncated or not an NRRD file ({detail})") from None
    slicer = is_slicer_segmentation(header)
    data, directions = _spatial_axes(data, header, path, layered=slicer)
    affine = _nrrd_affine(header, directions, path, volume)
    data = _label_to_uint8(data, path)
    if data.ndim == 4:
        label, names = merge_layers(data, segments, affine, path)
    else:
        check_layers(segments, 1, path)
        label, names = data, one_layer_names(segments, path)
    if slicer:
        return _place_sub_box(label, affine, volume, path), names
    return _align(label, affine, volume, path), names


def _nrrd_data(nrrd, header: dict, handle, path: Path, sizes: tuple[int, ...]) -> np.ndarray:
    """The data of an NRRD whose header was read from ``handle``, indexed as the header lists its
    axes (data[i, j, k], i the fastest). gzip or bzip2 data, in the file itself (how Slicer saves)
    or in a detached data file, after any line skip, is streamed into its array here and read to
    the end of its stream, so a corrupt or cut file is refused: pynrrd stops decoding where the
    file ends without asking whether the stream did (and holds the compressed and the
    decompressed bytes whole besides the array). Raw and text data go to pynrrd."""
    encoding = str(header.get("encoding", "")).lower()
    if encoding not in COMPRESSED_NRRD:
        return nrrd.read_data(header, handle, str(path), index_order="F")
    from nrrd.reader import _determine_datatype  # the type and endian fields as pynrrd reads them

    line_skip, byte_skip = (int(header.get(f"{name} skip", header.get(f"{name}skip", 0))) for name in ("line", "byte"))
    if line_skip < 0 or byte_skip < 0:
        # as Teem reads NRRD: -1 (data at the end of the file) is for raw data, whose length is known
        raise DataError(f"label file {path}: line skip {line_skip} / byte skip {byte_skip} with {encoding} data; "
                        "expected 0 or more")
    dtype = _determine_datatype(header)
    count = int(np.prod(sizes, dtype=np.int64))
    detached = header.get("data file", header.get("datafile"))
    with contextlib.ExitStack() as files:
        data, source = handle, f"label file {path}"
        if detached is not None:
            data_path = path.parent / str(detached)
            data, source = files.enter_context(open(data_path, "rb")), f"data file {data_path} of label {path}"
        for _ in range(line_skip):  # lines of the file, before its compressed data
            data.readline()
        # NRRD's byte skip counts decompressed bytes
        raw = inflate_exact(data, count * dtype.itemsize, source, encoding, skip=byte_skip)
    return raw.view(dtype).reshape(tuple(sizes)[::-1]).T


def _nrrd_affine(header: dict, directions: np.ndarray, path: Path, volume: Volume) -> np.ndarray:
    """The RAS affine of an NRRD's spatial axes."""
    space = str(header.get("space", "")).strip().lower()
    if space not in _NRRD_SPACE_TO_RAS:
        raise DataError(f"NRRD {path} has space {header.get('space')!r}; expected "
                        f"left-posterior-superior or right-anterior-superior")
    if "space origin" not in header:
        raise DataError(f"NRRD {path} has no space origin; cannot place it on {volume.case_id}")
    to_ras = _NRRD_SPACE_TO_RAS[space]
    origin = np.asarray(header["space origin"], dtype=np.float64).ravel()
    if origin.shape != (3,) or not np.isfinite(origin).all() or not np.isfinite(directions).all():
        raise DataError(f"NRRD {path}: fields space origin / space directions are not finite 3-D vectors")
    affine = np.eye(4)
    # pynrrd gives one row per axis: the world step of that axis' index, in the header's space.
    affine[:3, :3] = (directions * to_ras).T
    affine[:3, 3] = origin * to_ras
    return affine


def _place_sub_box(label_xyz: np.ndarray, affine_ras: np.ndarray, volume: Volume, path: Path) -> np.ndarray:
    """A Slicer segmentation on ``volume``'s grid: Slicer may save it cropped to its content, a box
    of the image's grid that starts a whole number of voxels into it (the header's origin says
    where; ``Segmentation_ReferenceImageExtentOffset`` counts in the grid Slicer was given as
    reference, which need not be this image's, so the geometry decides). The box goes back into
    an empty label map of the image's size. A file of one empty voxel is Slicer's way to save a
    segmentation with no voxel set, whatever its geometry: an empty label map."""
    if label_xyz.size == 1 and not label_xyz.any():
        return np.zeros(volume.hu.shape, dtype=np.uint8)
    label, affine = to_lps_layout(label_xyz, affine_ras, f"label {path}")
    x0, y0, z0 = sub_box_start(affine, volume.affine, label.shape[::-1], volume.hu.shape[::-1], f"label {path}",
                               volume.case_id)
    if label.shape == volume.hu.shape:
        return label
    full = np.zeros(volume.hu.shape, dtype=np.uint8)
    full[z0:z0 + label.shape[0], y0:y0 + label.shape[1], x0:x0 + label.shape[2]] = label
    return full


def _spatial_axes(data: np.ndarray, header: dict, path: Path, layered: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y, z) data and its 3x3 space directions; drops non-spatial axes of size 1. With
    ``layered`` (a Slicer segmentation) one non-spatial axis may be longer, the layers: the data
    is then (layer, x, y, z)."""
    if "space directions" not in header:
        raise DataError(f"NRRD {path} has no space directions; cannot place it on a CT grid")
    try:
        directions = np.asarray(header["space directions"], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"NRRD {path}: field space directions is not one vector per axis") from None
    if directions.ndim != 2 or directions.shape != (data.ndim, 3):
        raise DataError(f"NRRD {path}: field space directions has shape {list(directions.shape)}, expected one "
                        f"3-D vector for each of {data.ndim} axes")
    # Non-spatial axes ("none" in the header, a NaN row from pynrrd) must be length 1.
    spatial = ~np.isnan(directions).any(axis=1)
    extra = [axis for axis in np.flatnonzero(~spatial) if data.shape[axis] != 1]
    if spatial.sum() != 3 or len(extra) > (1 if layered else 0):
        raise DataError(f"NRRD {path} has shape {data.shape} with {int(spatial.sum())} spatial axes; "
                        f"expected a 3-D label map")
    if extra:
        data = np.moveaxis(data, extra[0], 0)
        rest = np.delete(spatial, extra[0])
        return data.reshape([data.shape[0], *(n for n, keep in zip(data.shape[1:], rest) if keep)]), directions[spatial]
    data = data.reshape([n for n, keep in zip(data.shape, spatial) if keep])
    return data, directions[spatial]
