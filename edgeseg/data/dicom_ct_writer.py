"""Write a Volume as a DICOM CT series: one single-frame CT Image Storage file per slice.

The phantoms are written this way so that the DICOM paths (``edgeseg predict --format
dicom-seg``, the DICOM node, SEG labels) can be exercised without scanner data. The series is
what :func:`~edgeseg.data.dicom.read_dicom_series` reads back to the same HU and geometry:
stored values are int16 with RescaleSlope 1 and RescaleIntercept -1024, the orientation,
pixel spacing and slice positions come from the Volume's affine, and every UID is new
(pydicom's ``generate_uid``).
"""

from __future__ import annotations

import copy
import datetime
import os
from pathlib import Path

import numpy as np

from edgeseg.data.volume import Volume
from edgeseg.errors import DataError, require

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024
MAX_DESCRIPTION = 64  # characters of a LO value (Study / Series Description)
# Axes closer to orthogonal than this (cosine) are accepted as an orthogonal grid.
ORTHOGONAL_TOLERANCE = 1e-4
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _stored_values(volume: Volume) -> np.ndarray:
    """HU as int16 stored values (HU - intercept); refuses HU that are not whole or do not fit."""
    hu = volume.hu
    if not np.isfinite(hu).all() or not np.array_equal(hu, np.round(hu)):
        raise DataError(f"{volume.case_id}: DICOM CT output needs whole-number HU (RescaleSlope 1)")
    low, high = float(hu.min()), float(hu.max())
    info = np.iinfo(np.int16)
    if low - RESCALE_INTERCEPT < info.min or high - RESCALE_INTERCEPT > info.max:
        raise DataError(f"{volume.case_id}: HU {low:g}..{high:g} do not fit int16 stored values with "
                        f"RescaleIntercept {RESCALE_INTERCEPT}")
    return (hu - RESCALE_INTERCEPT).astype(np.int16)


def _geometry(volume: Volume) -> tuple[np.ndarray, np.ndarray, list[float], np.ndarray, np.ndarray]:
    """(row cosine, column cosine, PixelSpacing, first slice position, slice step), all LPS mm.

    The Volume's x axis (increasing column index) is the DICOM row direction and its y axis
    (increasing row index) the column direction; slices follow the affine's z axis.
    """
    lps = _RAS_TO_LPS @ np.asarray(volume.affine, dtype=np.float64)
    x_step, y_step, z_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    lengths = [float(np.linalg.norm(v)) for v in (x_step, y_step, z_step)]
    if min(lengths) <= 0 or not np.isfinite(lps).all():
        raise DataError(f"{volume.case_id}: affine has a zero or non-finite axis; cannot place DICOM slices")
    row, column, normal = x_step / lengths[0], y_step / lengths[1], z_step / lengths[2]
    if max(abs(row @ column), abs(row @ normal), abs(column @ normal)) > ORTHOGONAL_TOLERANCE:
        raise DataError(f"{volume.case_id}: affine axes are not orthogonal; DICOM CT slices need an orthogonal grid")
    return row, column, [lengths[1], lengths[0]], lps[:3, 3], z_step


def _decimal(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters each)."""
    return [f"{float(v):.10g}"[:16] for v in values]


def _series_header(volume: Volume, description: str, now: datetime.datetime):
    """The attributes every slice of the series shares (patient, study, series, frame of reference)."""
    pydicom = require("pydicom", "io", "writing DICOM CT series")
    from pydicom.uid import generate_uid

    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.PatientName = f"Phantom^{volume.case_id}"
    ds.PatientID = volume.case_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = description
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = description
    ds.PatientPosition = "HFS"
    ds.ImageLaterality = "B"  # both sides of the body (it also makes series Laterality not required)
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "edgeseg"
    ds.ManufacturerModelName = "phantom"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.KVP = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in volume.hu.shape[1:])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = RESCALE_INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    return ds


def write_ct_series(volume: Volume, folder: str | os.PathLike, description: str = "") -> list[Path]:
    """Write ``volume`` as a DICOM CT series into the existing empty ``folder``; return the files.

    One CT Image Storage file per slice (``IM0001.dcm`` for the Volume's first, lowest, slice),
    explicit VR little endian, HU through RescaleSlope / RescaleIntercept, ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing and SliceThickness from the Volume's affine, and new
    Study, Series, Frame of Reference and SOP Instance UIDs. ``PatientID`` is the case id.
    HU must be whole numbers (refused otherwise, before anything is written); the caller makes
    the write atomic (the phantom writer builds its whole dataset in a staging folder).
    """
    require("pydicom", "io", "writing DICOM CT series")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    description = description or f"edgeseg {volume.case_id}"
    if len(description) > MAX_DESCRIPTION:
        raise DataError(f"series description {description!r} is longer than DICOM's {MAX_DESCRIPTION} characters (VR LO)")
    stored = _stored_values(volume)
    row, column, pixel_spacing, origin, z_step = _geometry(volume)
    folder = Path(folder)
    header = _series_header(volume, description, datetime.datetime.now(datetime.timezone.utc))
    files = []
    for k in range(volume.num_slices):
        ds = copy.deepcopy(header)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        position = origin + k * z_step
        ds.ImagePositionPatient = _decimal(position)
        ds.ImageOrientationPatient = _decimal([*row, *column])
        ds.PixelSpacing = _decimal(pixel_spacing)
        ds.SliceThickness = _decimal([np.linalg.norm(z_step)])[0]
        ds.SliceLocation = _decimal([position[2]])[0]
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files
