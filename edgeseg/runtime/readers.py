"""What ``edgeseg predict`` reads: a DICOM series folder, a NIfTI file, a PNG/JPG slice, NPY.

Each reader returns a :class:`~edgeseg.data.Volume` in the LPS layout with HU, plus the DICOM
references (for a DICOM SEG answer) when the source is a series. Readers are imported only for
the format at hand, so predicting an NPY array never loads pydicom or nibabel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.errors import DataError

if TYPE_CHECKING:  # imported where used: an NPY input never loads the DICOM readers
    from edgeseg.data.dicom_refs import DicomSeriesInfo
    from edgeseg.data.volume import Volume

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def check_input_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text; DataError when it is blank (``Path("")`` is the current folder, which an
    empty argument never means)."""
    text = os.fspath(path)
    if not text.strip():
        raise DataError(f"INPUT is empty ({text!r}); name a DICOM series folder or a .nii/.nii.gz, .png/.jpg or .npy file")
    return text


def input_kind(path: str | os.PathLike[str]) -> str:
    """``dicom``, ``nifti``, ``image`` or ``npy`` for an input path; DataError otherwise."""
    path = Path(check_input_path(path))
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(".npy"):
        return "npy"
    from edgeseg.data.dicom_magic import looks_like_dicom

    if looks_like_dicom(path):  # one file holding a series: an Enhanced CT
        return "dicom"
    raise DataError(f"cannot read {path}: expected a DICOM series folder or Enhanced CT file, .nii/.nii.gz, "
                    f".png/.jpg or .npy")


def bundle_intensity(source: dict[str, Any]) -> tuple[str, bool]:
    """What PNG/JPG pixels mean for a bundle with manifest ``source``: the intensity its training
    slices were read with (``source["intensity"]``, or its recipe's), else the default
    ``hu-clipped:0,255``; and whether the bundle said so."""
    from edgeseg.data.slices import DEFAULT_INTENSITY

    recorded = source.get("intensity") or ((source.get("recipe") or {}).get("values") or {}).get("intensity")
    return (str(recorded), True) if recorded else (DEFAULT_INTENSITY, False)


def read_input(path: str | os.PathLike[str], intensity: str = "hu-clipped:0,255", progress: bool = False,
               keep_headers: bool = False, even_grid: bool = False,
               volume: int | None = None, pick_hint: str | None = None) -> tuple[Volume, DicomSeriesInfo | None]:
    """Read ``path`` as (Volume, DicomSeriesInfo or None).

    ``intensity`` says what PNG/JPG pixels mean (see ``edgeseg.data.slices.SliceIntensity``):
    by default the pixel is the HU value clipped to [0, 255]. NPY files hold HU as (H, W) or
    (Z, H, W) in the LPS display layout, with unit spacing. ``progress`` shows a DICOM series
    being read on stderr; ``keep_headers`` keeps a series' headers in its DicomSeriesInfo, for
    a DICOM SEG to copy from without reading the files again. ``even_grid``: the caller refuses a
    series whose slices are unevenly spaced (:func:`~edgeseg.runtime.writers.check_nifti_grid`),
    so the reader does not also warn of them. ``volume``: which volume (1-based) of a DICOM series
    holding several (:mod:`edgeseg.data.dicom_volumes`); such a series is refused without it, the
    line ending with ``pick_hint`` where given (what the caller offers to pick one).
    """
    kind = input_kind(path)
    path = Path(path)
    if kind == "dicom":
        from edgeseg.data.dicom import read_dicom_series_with_refs

        if path.is_dir() and not any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
            raise DataError(f"input folder {path} is empty; expected the files of one DICOM series")
        return read_dicom_series_with_refs(path, progress=progress, keep_headers=keep_headers, warn_gaps=not even_grid,
                                           volume=volume, **({"pick_hint": pick_hint} if pick_hint else {}))
    if kind == "nifti":
        from edgeseg.data.nifti import read_nifti

        return read_nifti(path), None
    if kind == "image":
        return _read_image(path, intensity), None
    return _read_npy(path), None


def _read_image(path: Path, intensity: str) -> Volume:
    from edgeseg.data.slices import SliceIntensity, _read_channel0
    from edgeseg.data.volume import Volume, default_affine

    declared = SliceIntensity.parse(intensity)
    pixels, mode = _read_channel0(path)
    hu = declared.to_hu(pixels, mode, path)
    return Volume(hu=hu[None], spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)), case_id=path.stem,
                  hu_range=(declared.low, declared.high), source=str(path), slice_ids=[path.stem], contiguous=False,
                  spacing_known=False)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset from an ``.npy`` header, without reading the array."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            # numpy reads a header of the stated length in one call, allocating that much first:
            # a 4-byte length field can claim 4 GiB in a file of a few bytes.
            length_size = 2 if version == (1, 0) else 4
            stated = int.from_bytes(handle.read(length_size), "little")
            if stated > min(path.stat().st_size, 1 << 20):
                raise DataError(f"{path}: the .npy header claims {stated} bytes; the file holds "
                                f"{path.stat().st_size} (corrupt)")
            handle.seek(-length_size, 1)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            return tuple(shape), np.dtype(dtype), handle.tell()
    except (MemoryError, DataError):
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a corrupt header
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {path} as a numpy array: {detail}") from None


def _read_npy(path: Path) -> Volume:
    from edgeseg.data.volume import Volume, default_affine
    from edgeseg.limits import check_dims, check_file_holds, check_volume

    shape, dtype, offset = npy_header(path)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{path}: header field descr is {dtype}; expected real-valued HU (integers or floats)")
    if len(shape) not in (2, 3):
        raise DataError(f"{path} holds an array of shape {list(shape)}; expected (H, W) or (Z, H, W) HU")
    shape = check_dims(shape, path, "header field shape")
    check_volume(shape, path)
    count = 1
    for n in shape:
        count *= n
    check_file_holds(path, "header field shape", count * dtype.itemsize, path.stat().st_size - offset)
    try:
        array = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for a corrupt file
        raise DataError(f"cannot read {path} as a numpy array: {' '.join(str(exc).split())}") from None
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataError(f"{path}: {bad} values are NaN or infinite; edgeseg does not guess a value for them")
    if array.ndim == 2:
        array = array[None]
    return Volume(hu=array, spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)), case_id=path.stem,
                  source=str(path), spacing_known=False)
