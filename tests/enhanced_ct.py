"""Test data: an Enhanced CT Image Storage object made from a folder of single-frame CT slices.

Built with pydicom alone (no edgeseg code), so a test can read the single-frame series with
edgeseg's series reader as the oracle and compare the multi-frame read with it. The object is
written as a scanner would: one file, the pixels of every slice as its frames (in the order
asked for), geometry and rescale in the functional groups, shared where every frame has the same
value and per frame where they differ, and one dimension (the plane position).
``tests/test_enhanced_ct.py`` checks the helper itself: dciodvfy passes its output, and each frame
holds its source slice's pixels, position and rescale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
# Copied from the first slice where it has them: the patient, study and equipment of the object.
COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
          "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "FrameOfReferenceUID",
          "PositionReferenceIndicator", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
          "PixelPaddingValue", "PatientPosition")
IMAGE_TYPE = ["DERIVED", "PRIMARY", "VOLUME", "NONE"]
IRRADIATION_EVENT = "1.2.826.0.1.3680043.8.498.1"  # one made-up event for every frame
PIXEL_FIELDS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")


def read_slices(folder: str | Path) -> list[Dataset]:
    """The single-frame CT slices of ``folder``, in file-name order."""
    return [pydicom.dcmread(path) for path in sorted(Path(folder).iterdir()) if path.suffix == ".dcm"]


def _item(**values) -> Dataset:
    item = Dataset()
    for name, value in values.items():
        setattr(item, name, value)
    return item


def _frame_groups(ds: Dataset) -> dict[str, Dataset]:
    """One slice's functional groups, by sequence name (one item each)."""
    return {
        "PixelMeasuresSequence": _item(PixelSpacing=list(ds.PixelSpacing), SliceThickness=ds.SliceThickness),
        "PlaneOrientationSequence": _item(ImageOrientationPatient=list(ds.ImageOrientationPatient)),
        "PlanePositionSequence": _item(ImagePositionPatient=list(ds.ImagePositionPatient)),
        "PixelValueTransformationSequence": _item(RescaleIntercept=ds.RescaleIntercept,
                                                  RescaleSlope=ds.get("RescaleSlope", 1), RescaleType="HU"),
        "CTImageFrameTypeSequence": _item(FrameType=IMAGE_TYPE, PixelPresentation="MONOCHROME",
                                          VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE"),
        "FrameAnatomySequence": _item(FrameLaterality="U", AnatomicRegionSequence=Sequence([_item(
            CodeValue="818981001", CodingSchemeDesignator="SCT", CodeMeaning="Abdomen")])),
        "IrradiationEventIdentificationSequence": _item(IrradiationEventUID=IRRADIATION_EVENT),
        "FrameVOILUTSequence": _item(WindowCenter=ds.get("WindowCenter", 40), WindowWidth=ds.get("WindowWidth", 400)),
    }


def enhanced_ct(slices: list[Dataset], order: list[int] | None = None) -> Dataset:
    """An Enhanced CT object holding ``slices[k]`` as frame ``order.index(k) + 1`` (the slices in
    their own order by default). Groups whose value differs between slices go per frame."""
    order = list(range(len(slices))) if order is None else list(order)
    frames = [slices[k] for k in order]
    first = frames[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ENHANCED_CT
    for name in COPIED:
        if name in first:
            ds[name] = first[name]
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = first.get("ContentDate", first.StudyDate), first.get("ContentTime", first.StudyTime)
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = f"{first.StudyDate}{first.StudyTime}"
    ds.AcquisitionDuration = 1.0
    ds.DeviceSerialNumber = "0"
    ds.ImageType = IMAGE_TYPE
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    for name in PIXEL_FIELDS:
        ds[name] = first[name]
    ds.NumberOfFrames = len(frames)
    groups = [_frame_groups(frame) for frame in frames]
    shared, per_frame = Dataset(), [Dataset() for _ in frames]
    for name in groups[0]:
        items = [group[name] for group in groups]
        if name != "PlanePositionSequence" and all(item == items[0] for item in items):
            setattr(shared, name, Sequence([items[0]]))
        else:
            for target, item in zip(per_frame, items):
                setattr(target, name, Sequence([item]))
    # One dimension, the plane position: frame k's index is its rank along the slice normal.
    orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    heights = [float(np.dot(normal, np.asarray(frame.ImagePositionPatient, dtype=float))) for frame in frames]
    rank = {k: r + 1 for r, k in enumerate(sorted(range(len(frames)), key=heights.__getitem__))}
    for k, target in enumerate(per_frame):
        target.FrameContentSequence = Sequence([_item(DimensionIndexValues=[rank[k]], FrameAcquisitionNumber=1)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    organization = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=organization)])
    ds.DimensionIndexSequence = Sequence([_item(DimensionOrganizationUID=organization,
                                                DimensionIndexPointer=pydicom.tag.Tag("ImagePositionPatient"),
                                                FunctionalGroupPointer=pydicom.tag.Tag("PlanePositionSequence"),
                                                DimensionDescriptionLabel="Plane position")])
    ds.PixelData = np.stack([frame.pixel_array for frame in frames]).astype(first.pixel_array.dtype).tobytes()
    return ds


def write_enhanced_ct(slices: list[Dataset], out: str | Path, order: list[int] | None = None) -> Path:
    """:func:`enhanced_ct` written to ``out`` (parent folders made)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    enhanced_ct(slices, order).save_as(out, enforce_file_format=True)
    return out


def rescale_slices(slices: list[Dataset], rescales: list[tuple[float, float]]) -> list[Dataset]:
    """Copies of ``slices`` whose slice k holds the same HU under RescaleSlope, RescaleIntercept =
    ``rescales[k]``: its stored values recomputed, padding pixels (PixelPaddingValue) kept as
    they are stored. Stored values must come out whole numbers within int16."""
    result = []
    for ds, (slope, intercept) in zip(slices, rescales):
        copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(ds)))
        pixels = ds.pixel_array.astype(np.float64)
        hu = pixels * float(ds.get("RescaleSlope", 1)) + float(ds.RescaleIntercept)
        stored = (hu - intercept) / slope
        if "PixelPaddingValue" in ds:
            stored = np.where(pixels == int(ds.PixelPaddingValue), pixels, stored)
        if not np.array_equal(stored, np.round(stored)) or stored.min() < -32768 or stored.max() > 32767:
            raise ValueError(f"rescale {slope}, {intercept} does not hold slice {ds.SOPInstanceUID}'s HU in int16")
        copy.PixelData = stored.astype(np.int16).tobytes()
        copy.RescaleSlope, copy.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        result.append(copy)
    return result


def _bytes(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def large_enhanced_ct(first: Dataset, frames: int, size: int) -> Dataset:
    """An Enhanced CT header of ``frames`` frames of ``size`` x ``size``, made from tiny copies of the
    slice ``first`` moved 1 mm a frame along z; its pixel data is left for the caller to set (a
    large volume is built without decoding ``frames`` large slices)."""
    import copy

    first = copy.deepcopy(first)
    small = np.zeros((2, 2), dtype=first.pixel_array.dtype)
    del first.PixelData  # copied below, frames times
    slices = []
    for k in range(frames):
        ds = copy.deepcopy(first)
        ds.Rows = ds.Columns = 2
        ds.PixelData = small.tobytes()
        ds.ImagePositionPatient = [*list(first.ImagePositionPatient)[:2], float(first.ImagePositionPatient[2]) + k]
        slices.append(ds)
    ds = enhanced_ct(slices)
    ds.Rows = ds.Columns = size
    return ds


def series_copies(ds: Dataset, folder: Path, count: int) -> list[Path]:
    """``count`` files of ``ds`` in ``folder`` (``e0.dcm``, ...), each with Series and SOP Instance
    UIDs of its own."""
    paths = []
    for n in range(count):
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"e{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths
