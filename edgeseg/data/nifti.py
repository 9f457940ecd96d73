"""NIfTI reader: one file (plus an optional label file) or an MSD / LiTS style dataset folder.

Every volume is reoriented to the LPS display layout of :class:`~edgeseg.data.volume.Volume`
with nibabel's orientation tools, and its affine is carried through the reorientation so that
writers can put outputs back into the source's world coordinates.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, require
from edgeseg.limits import check_dims, check_file_holds, check_volume

nib = require("nibabel", "io", "reading NIfTI volumes")
nio = require("nibabel.orientations", "io", "reading NIfTI volumes")

from edgeseg.data.grid import check_same_grid, spacing_from_affine
from edgeseg.data.gzip_stream import GZIP_ERRORS, close_stream, finish_gzip, gzip_problem, image_stream, streamed
from edgeseg.data.label_values import LABEL_TOLERANCE
from edgeseg.data.nifti_affine import header_affine
from edgeseg.data.volume import Volume
from edgeseg.progress import progress_bar

log = logging.getLogger(__name__)
# nibabel prints the header fields it repairs ("qform_code 255 not valid; setting to 0") through a
# stderr handler of its own; passed up like any library's records, the CLI holds them as warnings.
_NIBABEL_LOG = logging.getLogger("nibabel.global")
_NIBABEL_LOG.handlers[:] = [h for h in _NIBABEL_LOG.handlers if type(h) is not logging.StreamHandler]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Label maps a dataset's labels folder may hold beside NIfTI: 3D Slicer segmentations (and plain
# NRRD label maps), as an annotator saves a corrected pre-annotation.
NRRD_LABEL_SUFFIXES = (".seg.nrrd", ".nrrd")
# Pairs of (images, labels) folder names, MSD / nnU-Net first.
DATASET_LAYOUTS = (("imagesTr", "labelsTr"), ("images", "labels"))
# nnU-Net names images case_0000.nii.gz (channel 0) and labels case.nii.gz.
NNUNET_CHANNEL_SUFFIX = "_0000"
# Everything nibabel, gzip and zlib raise for a truncated or corrupt file.
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError,
                nib.spatialimages.HeaderDataError)

_LPS = nio.axcodes2ornt(("L", "P", "S"))


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for a file name ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """The file name without its .nii / .nii.gz suffix (or a label file's .seg.nrrd / .nrrd)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii") + NRRD_LABEL_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def to_lps_layout(data_xyz: np.ndarray, affine_ras: np.ndarray, source: object = "volume"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Reorient an (x, y, z) array with a RAS affine to the ``hu[z, y, x]`` LPS layout.

    Returns the (Z, Y, X) array and the affine that maps its (x, y, z, 1) index to RAS mm.
    Axes are only flipped and permuted (to the closest LPS axes), never resampled, so an
    oblique grid keeps its obliquity in the affine.
    """
    view, affine = _lps_view(data_xyz, affine_ras, source)
    return np.ascontiguousarray(view), affine


def _lps_view(data_xyz: np.ndarray, affine_ras: np.ndarray, source: object) -> tuple[np.ndarray, np.ndarray]:
    """:func:`to_lps_layout` as a view of ``data_xyz`` (flips and a transpose, nothing copied)."""
    if not np.isfinite(affine_ras).all():
        raise DataError(f"{source}: affine is not finite: {np.round(affine_ras, 4).tolist()}")
    axes = nio.io_orientation(affine_ras)
    if np.isnan(axes).any():
        raise DataError(f"{source}: affine has no usable orientation (degenerate axes): "
                        f"{np.round(affine_ras, 4).tolist()}")
    transform = nio.ornt_transform(axes, _LPS)
    reoriented = nio.apply_orientation(data_xyz, transform)
    affine = affine_ras @ nio.inv_ornt_aff(transform, data_xyz.shape)
    return reoriented.transpose(2, 1, 0), affine


# Where the voxels may start: the 348- or 540-byte header and its extensions (CIFTI's XML, DICOM
# fields) take kilobytes to a few megabytes in practice.
MAX_VOX_OFFSET = 64 << 20


def _check_header(image, path: Path, what: str) -> None:
    """Refuse a header whose data edgeseg cannot hold or that lies about its size, before reading it."""
    dtype = image.header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        kind = "complex" if dtype.kind == "c" else "RGB or structured" if dtype.fields else str(dtype)
        raise DataError(f"{what} {path}: header field datatype is {kind} ({dtype}); edgeseg reads real-valued "
                        f"scalar volumes only")
    shape = check_dims(image.header.get_data_shape(), f"{what} {path}", "header field dim")
    spatial = (shape + (1, 1, 1))[:3]
    check_volume((_product(shape[2:]) if len(shape) > 2 else 1, spatial[1], spatial[0]), f"{what} {path}")
    # where the voxels start: the proxy's offset (a loaded image's header copy reads vox_offset 0)
    offset = int(getattr(image.dataobj, "offset", image.header.get_data_offset()))
    if offset > MAX_VOX_OFFSET:  # a .nii.gz would be inflated all that way to reach its voxels
        raise DataError(f"{what} {path}: header field vox_offset puts the voxels {offset} bytes in; a header and its "
                        f"extensions take at most {MAX_VOX_OFFSET} (a corrupt or hostile header)")
    if not str(path).lower().endswith(".gz"):
        check_file_holds(f"{what} {path}", "header field dim x datatype", _product(shape) * dtype.itemsize,
                         path.stat().st_size - offset)  # the pixel data after the header


def _product(shape) -> int:
    total = 1
    for n in shape:
        total *= int(n)
    return total


def _open(path: Path, what: str):
    """The nibabel image of ``path``, its header checked (datatype, dims against the size limits
    and the file's length) and its voxels not yet read; and its affine."""
    if not path.is_file():
        raise DataError(f"{what} {path} is not a regular file" if path.exists() else f"{what} file not found: {path}")
    try:
        image = nib.load(path)
        if str(path).lower().endswith(".gz"):
            image = streamed(image, path)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a corrupt header
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {what} {path}: truncated or not a NIfTI file ({detail})") from None
    try:
        _check_header(image, path, what)
        affine = header_affine(image, f"{what} {path}", path)  # the sform, or a usable qform beside an unusable one
    except BaseException:
        close_stream(image)
        raise
    return image, affine


def _voxels(image, path: Path, what: str, scaled: bool = True) -> np.ndarray:
    """The (x, y, z) voxels of an opened image: with the header's scl_slope / scl_inter applied,
    or (``scaled=False``) as stored, for a caller that scales them slab by slab."""
    stream = image_stream(image)
    try:
        # The header is read eagerly but the data lazily, so decoding happens here: a truncated
        # .nii.gz only fails now, with EOFError or zlib.error rather than a nibabel error.
        data = np.asanyarray(image.dataobj) if scaled else image.dataobj.get_unscaled()
    except _READ_ERRORS as exc:
        close_stream(image)
        detail = " ".join(str(exc).split())
        problem = gzip_problem(exc) if isinstance(exc, GZIP_ERRORS) else f"truncated or not a NIfTI file ({detail})"
        raise DataError(f"cannot read {what} {path}: {problem}") from None
    if stream is not None:
        finish_gzip(stream, f"{what} {path}")
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, np.newaxis]
    if data.ndim != 3:
        raise DataError(f"{what} {path} has shape {data.shape}; expected a 3-D volume")
    return data


def _load(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file fully; returns the (x, y, z) data, scaled as its header says, and its
    affine. The header is checked first; data with NaN or infinite values is refused."""
    image, affine = _open(path, what)
    data = _voxels(image, path, what)
    bad, over = _unfit_values(data)
    _refuse_unfit(bad, over, path, what)
    return data, affine


def _unfit_values(values: np.ndarray) -> tuple[int, int]:
    """(NaN or infinite values, finite values beyond float32) in ``values``."""
    if values.dtype.kind != "f":
        return 0, 0
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    # nibabel scales into float64, so a huge scl_slope gives finite values here that become
    # infinite once held as float32 HU
    over = int(np.count_nonzero(np.abs(values) > np.finfo(np.float32).max)) if values.dtype.itemsize > 4 else 0
    return bad, over


def _refuse_unfit(bad: int, over: int, path: Path, what: str) -> None:
    if bad:
        raise DataError(f"{what} {path}: {bad} voxel values are NaN or infinite (after the header's "
                        f"scl_slope / scl_inter); edgeseg does not guess a value for them")
    if over:
        raise DataError(f"{what} {path}: {over} voxel values are beyond float32 (over "
                        f"{float(np.finfo(np.float32).max):.4g} in magnitude after the header's scl_slope / "
                        f"scl_inter); edgeseg does not guess a value for them")


# Voxels scaled and converted per step when the HU array is filled: a few MB of temporaries
# instead of a float64 copy of the whole volume.
SLAB_VOXELS = 1 << 18


def _hu_lps(image, affine: np.ndarray, path: Path, what: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The float32 HU of an opened image in the (Z, Y, X) LPS layout, that layout's affine, and
    the stored (x, y, z) shape.

    The stored voxels are read once and the HU array is filled from them slab by slab, scaled
    as nibabel scales (``apply_read_scaling``, in float64 where the slope needs it), so the
    peak is the stored volume plus the float32 one: reading the scaled volume whole, then
    converting and reorienting it, held a float64 copy and two float32 ones at once.
    """
    from nibabel.volumeutils import apply_read_scaling

    raw = _voxels(image, path, what, scaled=False)
    slope, inter = np.asanyarray(image.dataobj.slope), np.asanyarray(image.dataobj.inter)
    if np.can_cast(inter, slope.dtype):  # as nibabel's own scaled read types them
        inter = inter.astype(slope.dtype)
    view, lps_affine = _lps_view(raw, affine, path)
    hu = np.empty(view.shape, dtype=np.float32)
    step = max(1, SLAB_VOXELS // max(1, view.shape[1] * view.shape[2]))
    bad = over = 0
    for start in range(0, view.shape[0], step):
        values = apply_read_scaling(view[start:start + step], slope, inter)
        more_bad, more_over = _unfit_values(values)
        bad, over = bad + more_bad, over + more_over
        if not bad + over:  # else the volume is refused below, after every value is counted
            hu[start:start + step] = values
    _refuse_unfit(bad, over, path, what)
    return hu, lps_affine, raw.shape


def _label_to_uint8(label: np.ndarray, path: Path) -> np.ndarray:
    """The label map as uint8: floating-point values within LABEL_TOLERANCE of a whole number
    are rounded to it; values further off, or outside 0..255, are refused."""
    if label.size == 0:
        return label.astype(np.uint8)
    if label.dtype.kind == "f":
        rounded = np.rint(label)
        off = np.abs(label - rounded)
        worst = int(np.argmax(off))
        if off.flat[worst] > LABEL_TOLERANCE:
            count = int(np.count_nonzero(off > LABEL_TOLERANCE))
            raise DataError(f"label file {path} holds {count} voxel values more than {LABEL_TOLERANCE:g} from a whole "
                            f"number (e.g. {label.flat[worst]:.7g}); expected a label map (values within "
                            f"{LABEL_TOLERANCE:g} of an integer are rounded to it)")
        label = rounded
    low, high = float(label.min()), float(label.max())
    if low < 0 or high > 255:
        raise DataError(f"label values of {path} span {low:g}..{high:g}; labels must fit uint8 (0..255)")
    return label.astype(np.uint8)


def read_nifti(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike | None = None,
    case_id: str | None = None,
) -> Volume:
    """Read a NIfTI CT volume (and optionally its label map) into an LPS-layout Volume.

    HU come from the stored values with the header's scaling applied. The label file must
    have the image's shape, lie on its grid (:func:`~edgeseg.data.grid.check_same_grid`) and
    hold values that fit uint8. ``case_id`` defaults to
    the image file name without its suffix.
    """
    image_path = Path(image_path)
    image, affine = _open(image_path, "image")
    hu, lps_affine, shape_xyz = _hu_lps(image, affine, image_path, "image")

    label = None
    nrrd_label = label_path is not None and str(label_path).lower().endswith(NRRD_LABEL_SUFFIXES)
    if label_path is not None and not nrrd_label:
        label_path = Path(label_path)
        label_data, label_affine = _load(label_path, "label")
        if label_data.shape != shape_xyz:
            raise DataError(
                f"label {label_path} has shape {label_data.shape} but image {image_path} "
                f"has shape {shape_xyz}"
            )
        label, label_lps_affine = to_lps_layout(_label_to_uint8(label_data, label_path), label_affine,
                                                   label_path)
        check_same_grid(label_lps_affine, lps_affine, hu.shape[::-1], f"label {label_path}", f"image {image_path}")
    try:
        spacing = spacing_from_affine(lps_affine)
    except DataError as exc:
        raise DataError(f"image {image_path}: header fields qform/sform: {exc}") from None
    volume = Volume(
        hu=hu,
        spacing=spacing,
        affine=lps_affine,
        case_id=case_id if case_id is not None else nifti_stem(image_path),
        label=label,
        source=str(image_path),
    )
    if nrrd_label:
        from edgeseg.data.labels import attach_label_file  # labels reads NIfTI through this module

        attach_label_file(volume, label_path)
    return volume


def _nifti_files(folder: Path, suffixes: tuple[str, ...] = NIFTI_SUFFIXES) -> list[Path]:
    # MSD archives carry macOS "._name.nii.gz" resource forks that are not NIfTI: skip hidden.
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(suffixes) and not p.name.startswith(".")
    )


def label_files(folder: Path) -> dict[str, Path]:
    """Case id -> label file of a labels folder: NIfTI, or a 3D Slicer ``.seg.nrrd`` / NRRD label
    map; DataError where one case has two (``a.nii.gz`` beside ``a.seg.nrrd``: which is the
    corrected one cannot be told)."""
    labels: dict[str, Path] = {}
    for path in _nifti_files(folder, NIFTI_SUFFIXES + NRRD_LABEL_SUFFIXES):
        stem = nifti_stem(path)
        if stem in labels:
            raise DataError(f"case {stem} has two label files in {folder}: {labels[stem].name} and {path.name}; "
                            "keep one")
        labels[stem] = path
    return labels


def _find_label(image: Path, labels: dict[str, Path]) -> Path | None:
    stem = nifti_stem(image)
    if stem in labels:
        return labels[stem]
    if stem.endswith(NNUNET_CHANNEL_SUFFIX):
        return labels.get(stem[: -len(NNUNET_CHANNEL_SUFFIX)])
    return None


def find_nifti_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path | None]]:
    """List (image, label or None) pairs of a NIfTI dataset folder without reading them.

    Accepts ``imagesTr/`` + ``labelsTr/`` (MSD, nnU-Net), ``images/`` + ``labels/``, either
    without its labels folder, or a flat folder of NIfTI images. When a labels folder exists,
    every image needs a label of the same name (nnU-Net's ``_0000`` channel suffix allowed), and
    every label an image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    for images_name, labels_name in DATASET_LAYOUTS:
        images_dir = folder / images_name
        if images_dir.is_dir():
            labels_dir = folder / labels_name
            break
    else:
        images_dir, labels_dir = folder, None
    images = _nifti_files(images_dir)
    if not images:
        raise DataError(f"no images found in {images_dir} (expected .nii or .nii.gz files)")
    if labels_dir is None or not labels_dir.is_dir():
        return [(image, None) for image in images]
    labels = label_files(labels_dir)
    channels = sorted(p for p in images if re.fullmatch(r".+_(?!0000)\d{4}", nifti_stem(p)))
    if channels and any(nifti_stem(p).endswith(NNUNET_CHANNEL_SUFFIX) for p in images):
        # nnU-Net's second and later input channels (_0001, ...): a CT model takes one channel
        raise DataError(f"image {channels[0]} is a second input channel of an nnU-Net case (suffix "
                        f"{nifti_stem(channels[0])[-5:]}); edgeseg segments one CT channel ({NNUNET_CHANNEL_SUFFIX}): "
                        "give a dataset with the CT channel alone")
    pairs = []
    for image in images:
        label = _find_label(image, labels)
        if label is None:
            raise DataError(f"image {image} has no label file in {labels_dir}")
        pairs.append((image, label))
    # a label without its image means a case is missing, which training would not notice
    strays = sorted(set(labels.values()) - {label for _, label in pairs})
    if strays:
        raise DataError(f"label {strays[0]} has no image in {images_dir} (expected {nifti_stem(strays[0])}.nii.gz "
                        f"or {nifti_stem(strays[0])}{NNUNET_CHANNEL_SUFFIX}.nii.gz)")
    return pairs


def read_nifti_dataset(folder: str | os.PathLike, progress: bool = False) -> list[Volume]:
    """Read every case of a NIfTI dataset folder (see :func:`find_nifti_pairs` for layouts).

    Case ids are the label file names without suffix (the image's when there is no label).
    ``progress`` shows progress on stderr (:mod:`edgeseg.progress`).
    """
    pairs = find_nifti_pairs(folder)
    volumes = []
    for image, label in progress_bar(pairs, desc="reading NIfTI", unit="case", shown=progress):
        case_id = nifti_stem(label if label is not None else image)
        volumes.append(read_nifti(image, label, case_id=case_id))
    log.debug("read %d NIfTI cases from %s", len(volumes), folder)
    return volumes
