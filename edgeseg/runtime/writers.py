"""Writers for predicted label maps: NIfTI, Slicer segmentation (.seg.nrrd), DICOM SEG, PNG
overlays and NPY, all atomic.

Label maps arrive as (Z, Y, X) uint8 in the Volume's LPS layout. NIfTI output of a NIfTI input
(and a .seg.nrrd) goes back onto the input's own voxel grid and affine, so viewers overlay it
without resampling;
DICOM SEG output references the source series instance by instance (highdicom, extra
``dicom``). Given a ``provenance`` record (:func:`edgeseg.runtime.provenance.provenance`), each
writer stores it where its format has room (see docs/provenance.md); NPY has none.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np

from edgeseg import __version__
from edgeseg.atomic import atomic_dir, atomic_path
from edgeseg.data.grid import SHEAR_WARNING_VOXELS, shear_offset_mm, spacing_from_affine
from edgeseg.data.nifti_affine import header_affine, sform_passed_over
from edgeseg.errors import DataError, require
from edgeseg.progress import progress_bar
from edgeseg.runtime.label_tables import slicer_segment_fields
from edgeseg.runtime.overlay import DISPLAY_WINDOW, overlay_rgb
from edgeseg.runtime.provenance import PROVENANCE_KEY, provenance_json, short_description
from edgeseg.runtime.seg_measures import state_frame_measures
from edgeseg.runtime.seg_sources import renumber_source_frames, seg_source_datasets
from edgeseg.runtime.segment_codes import Coded, segment_coding

FORMATS = ("nifti", "seg-nrrd", "dicom-seg", "png", "npy")
log = logging.getLogger(__name__)

SUFFIX_FORMATS = {".nii": "nifti", ".nii.gz": "nifti", ".seg.nrrd": "seg-nrrd", ".dcm": "dicom-seg", ".png": "png",
                  ".npy": "npy"}
# The optional library each format's writer imports: (module, extra, what needs it).
WRITER_LIBRARIES = {"nifti": ("nibabel", "io", "NIfTI output"), "dicom-seg": ("highdicom", "dicom", "DICOM SEG output"),
                    "seg-nrrd": ("nrrd", "io", "Slicer segmentation (.seg.nrrd) output"),
                    "png": ("PIL.Image", "io", "PNG output")}


def check_writer(fmt: str):
    """Import the library ``fmt``'s writer needs (None for NPY, which needs none): a caller
    checks it before reading or segmenting anything, so that a missing one is said at once,
    not after the model has run, and no other output of the run is written without it."""
    return require(*WRITER_LIBRARIES[fmt]) if fmt in WRITER_LIBRARIES else None


def format_for(out: str | os.PathLike, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else the one ``out``'s suffix names."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise DataError(f"output format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    name = Path(out).name.lower()
    for suffix, known in sorted(SUFFIX_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return known
    raise DataError(f"cannot tell the output format from {out}; name it .nii.gz, .seg.nrrd, .dcm, .png or .npy, "
                    "or pass --format")


def label_volume(labels: np.ndarray, volume=None, what: str = "output") -> np.ndarray:
    """``labels`` as a (Z, Y, X) uint8 array, or DataError: values that are not whole numbers in
    0..255 would change class in a uint8 file (300 would be stored as 44), and labels of another
    shape than ``volume``'s HU do not belong to its slices."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf" or arr.ndim != 3 or 0 in arr.shape:
        raise DataError(f"{what}: labels must be a non-empty (Z, Y, X) array of class numbers, "
                        f"got {arr.dtype} of shape {list(arr.shape)}")
    if arr.dtype != np.uint8 and arr.dtype.kind != "b":
        low, high = arr.min(), arr.max()
        if not (0 <= low and high <= 255 and (arr.dtype.kind != "f" or np.array_equal(arr, np.round(arr)))):
            raise DataError(f"{what}: labels must be class numbers 0..255 (uint8), got {arr.dtype} values "
                            f"{low:g}..{high:g}")
    hu = getattr(volume, "hu", None)
    if hu is not None and arr.shape != tuple(hu.shape):
        raise DataError(f"{what}: labels of shape {list(arr.shape)} do not match the volume's {list(hu.shape)}")
    return arr.astype(np.uint8, copy=False)


def write_npy(labels: np.ndarray, out: str | os.PathLike) -> Path:
    """Save the (Z, Y, X) labels as ``.npy``."""
    if Path(out).is_dir():  # the rename onto it would fail only after the labels were written
        raise DataError(f"npy output {out} is a folder; name a file")
    with atomic_path(out, suffix=".npy") as tmp:
        np.save(tmp, labels)
    return Path(out)


def check_nifti_grid(volume, out: str | os.PathLike, what: str = "NIfTI output") -> None:
    """DataError where ``volume``'s slices do not lie on one regular grid (a DICOM series with a
    missing slice, or with slices shifted in-plane off the line of the others): a NIfTI or NRRD file has one slice spacing, so the labels after the gap would
    lie up to half a gap away from their slices. Checked before the model runs, and again on writing."""
    gaps = getattr(volume, "uneven_gaps", None)
    if gaps is not None:
        raise DataError(f"{what} {out}: the slices of {volume.source or volume.case_id} are unevenly spaced "
                        f"({gaps[0]:.4g} to {gaps[1]:.4g} mm apart: a missing slice?), and one regular grid would "
                        "misplace the labels after the gap; write a DICOM SEG (--format dicom-seg), which "
                        "references each slice, or complete the series")
    off = getattr(volume, "off_line", None)
    if off is not None:
        raise DataError(f"{what} {out}: slice {off[1]} of {volume.source or volume.case_id} lies {off[0]:.3g} mm "
                        "(across the slice normal) off the line through the first and last slice positions, and "
                        "one regular grid would misplace its labels that far; write a DICOM SEG (--format dicom-seg), "
                        "which references each slice")


def source_grid(labels: np.ndarray, volume, out: str | os.PathLike, what: str):
    """``labels`` (Z, Y, X, LPS layout) on the grid of the file ``volume`` was read from: the
    (x, y, z) uint8 array, its affine (voxel index to RAS mm), and that NIfTI file's image (None
    for other input, whose labels keep the Volume's layout and affine). A NIfTI input's own axis
    order is kept, so that a viewer finds label and image on one identical voxel grid and never
    resamples either."""
    check_nifti_grid(volume, out, what)
    labels = label_volume(labels, what=f"{what} {out}")
    data_xyz = labels.transpose(2, 1, 0)
    affine = np.asarray(volume.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        # nibabel would fail on it with its own multi-line error, or write a file no viewer places
        raise DataError(f"{what} {out}: the volume's affine must be a finite 4x4 matrix with non-zero voxel "
                        f"sizes, got {affine.tolist()}")
    source = Path(volume.source) if volume.source else None
    if source is None or not source.name.lower().endswith((".nii", ".nii.gz")) or not source.is_file():
        return np.ascontiguousarray(data_xyz), affine, None
    nib = require("nibabel", "io", what)
    nio = require("nibabel.orientations", "io", what)
    original = nib.load(str(source))
    original_affine = header_affine(original, source, source, warn=False)  # as read: a usable qform beside a bad sform
    back = nio.ornt_transform(nio.io_orientation(affine), nio.io_orientation(original_affine))
    data_xyz = nio.apply_orientation(data_xyz, back)
    grid = tuple(original.shape[:3])
    # a 2-D input was read as one slice; its labels keep the input's own dimensions
    if data_xyz.shape != grid + (1,) * (3 - len(grid)):
        raise DataError(f"labels of shape {labels.shape} do not fit the grid {grid} of {source}")
    return np.ascontiguousarray(data_xyz.reshape(grid)), original_affine, original


def write_nifti(labels: np.ndarray, volume, out: str | os.PathLike, provenance: dict | None = None,
                progress: bool = False, named: str | os.PathLike | None = None) -> Path:
    """Save labels as NIfTI in the world of ``volume``: on the input file's own grid, with its
    header's qform and sform (matrices and codes) and units, when the input was NIfTI; else with
    the Volume's affine (LPS array order) as qform and sform, code 1 (scanner). Either way the
    header says label map (intent ``label``) with no display range of the CT's, and none of the
    input's ``descrip`` or header extensions (a DICOM header extension names the patient);
    ``provenance`` goes into ``descrip`` (short) and a comment extension (JSON). ``progress``
    shows the slices written on stderr (compressing a 600-slice series takes seconds). ``named``:
    the output as messages and progress name it, where ``out`` is a staged path the caller
    renames into place (default ``out``)."""
    nib = check_writer("nifti")

    named = out if named is None else named
    data_xyz, affine, original = source_grid(labels, volume, named, "NIfTI output")
    header = None
    if original is not None:
        header = original.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        # the CT's display range (cal_min / cal_max) would show the labels 0..2 as black in a
        # viewer that honours it, and a statistic intent of the CT does not describe labels
        header["cal_min"], header["cal_max"] = 0.0, 0.0
        header["descrip"] = b""
        header.extensions.clear()
        if sform_passed_over(header):  # the output is placed as the input was read: by its qform alone
            header.set_sform(header.get_qform(), code=0)
    image = nib.Nifti1Image(np.ascontiguousarray(data_xyz, dtype=np.uint8), affine, header)
    image.header.set_intent("label")
    if provenance:
        image.header["descrip"] = short_description(provenance).encode("ascii")
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", provenance_json(provenance).encode()))
    if header is None:
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        offset = _visible_shear(affine, data_xyz.shape)
        if offset:
            # the sform is exact, but the qform (a rotation) and ITK-based tools (which keep only
            # a rotation of any sform) place the slices squarely stacked, off by the shear
            log.warning("NIfTI output %s: the grid of %s is sheared (a gantry-tilted series?); its sform is exact, "
                        "but the qform and ITK-based viewers stack the slices squarely, up to %.3g mm off; for "
                        "those, write a DICOM SEG (--format dicom-seg)", named, volume.source or volume.case_id, offset)
    # else the input's own qform and sform, matrices and codes, and its units: set again from
    # the affine, a sheared sform (gantry tilt) would also become the qform, which cannot hold a
    # shear and takes the nearest rotation instead, and an "aligned" or template sform would be
    # relabelled as scanner coordinates
    suffix = ".nii.gz" if str(out).lower().endswith(".gz") else ".nii"
    with atomic_path(out, suffix=suffix) as tmp:
        _save_nifti(nib, image, tmp, Path(named).name if progress else None)
    return Path(out)


def _visible_shear(affine: np.ndarray, shape_xyz) -> float:
    """How far (mm) a viewer keeping only a rotation of ``affine`` misplaces a voxel, where that is
    over :data:`~edgeseg.data.grid.SHEAR_WARNING_VOXELS` of a voxel (a gantry tilt), else 0: an
    oblique series whose positions were rounded to 0.01 mm is sheared by far less than that."""
    offset = shear_offset_mm(affine, shape_xyz)
    return offset if offset > SHEAR_WARNING_VOXELS * min(spacing_from_affine(affine)) else 0.0


def _save_nifti(nib, image, path: Path, shown_as: str | None) -> None:
    """``nib.save``; with ``shown_as`` (the name the user gave), the slices are counted as
    nibabel writes them (one x-y plane per write), through the same opener nib.save uses (its
    gzip level and header) under a writer that counts bytes."""
    if shown_as is None:
        nib.save(image, str(path))
        return
    from nibabel.fileholders import FileHolder
    from nibabel.openers import ImageOpener

    shape = image.shape
    plane = max(1, int(np.prod(shape[:2])) * image.get_data_dtype().itemsize)
    with progress_bar(total=int(np.prod(shape[2:])), desc=f"writing {shown_as}",
                      unit="slice") as bar, ImageOpener(str(path), "wb") as opened:
        image.to_file_map({"image": FileHolder(fileobj=_CountingFile(opened, plane, bar))})  # type: ignore[arg-type]  # nibabel says IOBase; this forwards each file method it calls


class _CountingFile:
    """A file object that advances ``bar`` by one for each ``unit`` bytes written through it."""

    def __init__(self, fileobj, unit: int, bar) -> None:
        self._fileobj, self._unit, self._bar, self._bytes = fileobj, unit, bar, 0

    def write(self, data) -> int:
        written: int = self._fileobj.write(data)
        before, self._bytes = self._bytes, self._bytes + memoryview(data).nbytes
        done = min(self._bytes // self._unit, self._bar.total) - min(before // self._unit, self._bar.total)
        if done:
            self._bar.update(done)
        return written

    def __getattr__(self, name: str):  # seek, tell, flush, name: as the file under it
        return getattr(self._fileobj, name)


# gzip level of .seg.nrrd output: zlib's default. pynrrd's default, 9, spent 2.5 to 4 times the
# CPU of level 6 on a 600-slice label map for a file 15 to 25 % smaller; level 1 saved little more
# time and doubled the file (docs/results.md, Reading and writing a 600-slice case).
SEG_NRRD_GZIP_LEVEL = 6
# RAS <-> LPS: NRRD files for Slicer and ITK-SNAP are written in LPS, the space ITK works in.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def write_seg_nrrd(labels: np.ndarray, volume, class_names: dict[int, str], out: str | os.PathLike,
                   provenance: dict | None = None, named: str | os.PathLike | None = None) -> Path:
    """Save labels as a 3D Slicer segmentation (``.seg.nrrd``, gzip): on the input's own voxel
    grid as :func:`source_grid` gives it (space left-posterior-superior), one layer whose
    segments are the bundle's classes, each named, coloured as in every edgeseg figure, and
    with its class number as label value (:func:`~edgeseg.runtime.label_tables.slicer_segment_fields`),
    and ``provenance`` as the field ``edgeseg_provenance`` (JSON); ``named`` as for :func:`write_nifti`.
    ITK-SNAP and other ITK readers open it as a plain label map on the same grid."""
    nrrd = check_writer("seg-nrrd")

    named = out if named is None else named
    data_xyz, affine, _ = source_grid(labels, volume, named, "Slicer segmentation output")
    offset = _visible_shear(affine, data_xyz.shape)
    if offset:
        log.warning("Slicer segmentation output %s: the grid of %s is sheared (a gantry-tilted series?); Slicer "
                    "keeps only a rotation of it and stacks the slices squarely, up to %.3g mm off; write a DICOM "
                    "SEG (--format dicom-seg) for it", named, volume.source or volume.case_id, offset)
    header = {"space": "left-posterior-superior", "kinds": ["domain"] * 3, "encoding": "gzip",
              # one row per file axis: the LPS step of that index
              "space directions": (_RAS_TO_LPS @ affine[:3, :3]).T,
              "space origin": _RAS_TO_LPS @ affine[:3, 3]}
    header.update(slicer_segment_fields(class_names, data_xyz.shape))
    if provenance:  # a key:=value field, which Slicer keeps as it is
        header[PROVENANCE_KEY] = provenance_json(provenance)
    with atomic_path(out, suffix=".seg.nrrd") as tmp:
        nrrd.write(str(tmp), data_xyz, header, index_order="F", compression_level=SEG_NRRD_GZIP_LEVEL)
    return Path(out)


def png_text(provenance: dict | None):
    """PNG text chunks holding ``provenance`` (for Pillow's ``pnginfo``), or None."""
    if not provenance:
        return None
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PROVENANCE_KEY, provenance_json(provenance))
    return info


def write_png(labels: np.ndarray, volume, out: str | os.PathLike, window: tuple[float, float] = DISPLAY_WINDOW,
              provenance: dict | None = None) -> Path:
    """Overlay PNGs: a file for a single slice, else a folder with one PNG per slice; the CT in
    the display ``window`` (low, high HU; :func:`~edgeseg.runtime.overlay.display_window`); each
    PNG holds ``provenance`` as the text chunk ``edgeseg_provenance``."""
    Image = check_writer("png")

    out = Path(out)
    labels = label_volume(labels, volume, what=f"PNG output {out}")
    text = png_text(provenance)
    if labels.shape[0] == 1:
        with atomic_path(out, suffix=".png") as tmp:
            Image.fromarray(overlay_rgb(volume.hu[0], labels[0], window)).save(tmp, format="PNG", pnginfo=text)
        return out
    with atomic_dir(out) as folder:
        write_png_slices(labels, volume, folder, window, provenance)
    return out


def write_png_slices(labels: np.ndarray, volume, folder: str | os.PathLike,
                     window: tuple[float, float] = DISPLAY_WINDOW, provenance: dict | None = None) -> None:
    """The PNGs of :func:`write_png` for a volume, one per slice, into the existing ``folder``
    (a staging folder that its caller puts in place)."""
    Image = check_writer("png")

    labels = label_volume(labels, volume, what=f"PNG output {folder}")
    text = png_text(provenance)
    for k, name in enumerate(volume.slice_ids):
        Image.fromarray(overlay_rgb(volume.hu[k], labels[k], window)).save(Path(folder) / f"{k:04d}_{Path(name).stem}.png",
                                                                           pnginfo=text)


def write_overlay(labels: np.ndarray, volume, out: str | os.PathLike,
                  window: tuple[float, float] = DISPLAY_WINDOW, provenance: dict | None = None) -> Path:
    """One overlay PNG of the slice with the most foreground (the first slice if none has any),
    the CT in the display ``window`` (low, high HU), holding ``provenance`` as :func:`write_png`."""
    Image = check_writer("png")

    labels = label_volume(labels, volume, what=f"overlay {out}")
    k = int(np.argmax(np.count_nonzero(labels.reshape(len(labels), -1), axis=1)))
    with atomic_path(out, suffix=".png") as tmp:
        Image.fromarray(overlay_rgb(volume.hu[k], labels[k], window)).save(tmp, format="PNG",
                                                                          pnginfo=png_text(provenance))
    return Path(out)


def _code(coded: Coded):  # -> pydicom's Code, imported here only: pydicom is the dicom extra's
    from pydicom.sr.coding import Code

    return Code(coded.value, coded.scheme, coded.meaning)


def write_dicom_seg(labels: np.ndarray, volume, refs, class_names: dict[int, str], out: str | os.PathLike,
                    algorithm: str = "edgeseg", sources: list | None = None,
                    parameters: dict[str, str] | None = None, provenance: dict | None = None,
                    series: tuple[str, int] | None = None) -> Path:
    """A binary DICOM SEG of ``labels`` on the series ``refs`` describes (one segment per
    foreground class, coded as :mod:`edgeseg.runtime.segment_codes` says, frames referencing the
    source instances). ``sources``: the headers :func:`seg_source_datasets` gave for ``refs``,
    when the caller checked them before segmenting; read and checked here otherwise. ``parameters``
    (:meth:`Segmenter.algorithm_parameters`) name the model in each segment's Algorithm Parameters;
    ``provenance`` adds the backend's library to Software Versions and a summary as Content
    Description (64 characters, the LO limit). ``series``: (Series Instance UID, Instance Number)
    of a SEG that replaces one in that series; a new series and 1 by default."""
    if refs is None:
        raise DataError("DICOM SEG output needs a DICOM series as input (it references the source images)")
    hd = check_writer("dicom-seg")
    from pydicom.sr.codedict import codes

    stack = refs.to_frame_order(refs.to_source_layout(labels))  # highdicom pairs it with the frames in file order
    if stack.shape[0] != refs.num_slices:
        raise DataError(f"labels have {stack.shape[0]} slices but the series has {refs.num_slices} "
                        f"{'files' if refs.frame_numbers is None else 'frames'}")
    if sources is None:
        sources = seg_source_datasets(refs)
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, family=codes.DCM.ArtificialIntelligence,
                                                      version=__version__, parameters=parameters or None)
    descriptions = []
    for number, name in sorted(class_names.items()):
        if number <= 0:
            continue
        coding = segment_coding(name)
        region = None if coding.region is None else [_code(coding.region)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=_code(coding.category),
            segmented_property_type=_code(coding.property_type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_id, anatomic_regions=region))
    with warnings.catch_warnings():
        # The patient's name is copied from the source as it is; its form is not ours to fix.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        try:
            seg = _segmentation(hd, sources, stack, descriptions, algorithm, provenance or {}, series)
            state_frame_measures(seg, sources)  # each frame's source thickness, not the first's for all
            renumber_source_frames(seg, refs)
        except (ValueError, TypeError, AttributeError) as exc:
            # what seg_source_datasets does not foresee in a source header is still one line
            raise DataError(f"cannot make a DICOM SEG of series {refs.series_instance_uid}: "
                            f"{' '.join(str(exc).split())}") from None
    with atomic_path(out, suffix=".dcm") as tmp:
        seg.save_as(tmp)
    return Path(out)


def _segmentation(hd, sources, stack, descriptions, algorithm: str, provenance: dict, series=None):
    versions = [__version__]
    if provenance.get("backend_version"):
        versions.append(f"{provenance['backend']} {provenance['backend_version']}"[:64])
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series[0] if series else hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=series[1] if series else 1, manufacturer="edgeseg",
        manufacturer_model_name=algorithm, software_versions=versions if len(versions) > 1 else __version__,
        device_serial_number="0", series_description=f"{algorithm} segmentation", omit_empty_frames=False,
        content_description=short_description(provenance, 64) if provenance else None,
    )
