"""CT series holding two volumes under one Series Instance UID, made with pydicom from the
3-slice test series, for the tests of the volume split (predict and the DICOM node).

Each maker gives the files of volume 1 and of volume 2 as the split rule numbers them, known from
how the series was made, not from edgeseg: the oracle the tests compare against. Volume 2's
pixels are volume 1's shifted sideways, so the two volumes segment differently."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

SERIES = Path(__file__).parent / "data" / "dcmqi_ct_liver" / "ct-3slice"
SHIFT_COLUMNS = 60


def _orientation(ds, volume: int, slice_index: int) -> None:
    if volume == 1:  # the second reconstruction: rows and columns swapped, so another orientation
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]


def _temporal(ds, volume: int, slice_index: int) -> None:
    ds.TemporalPositionIdentifier = volume + 1
    ds.NumberOfTemporalPositions = 2


def _stack(ds, volume: int, slice_index: int) -> None:
    ds.StackID = str(volume + 1)
    ds.InStackPositionNumber = slice_index + 1


def _acquisition(ds, volume: int, slice_index: int) -> None:
    ds.AcquisitionNumber = volume + 1
    ds.ContentTime = f"1200{volume:02d}"


def _nothing(ds, volume: int, slice_index: int) -> None:
    ds.AcquisitionNumber = 1
    ds.ContentTime = "120000"


# kind: how volume k's images are told apart (volume 1 first, by the documented order)
KINDS = {"orientation": _orientation, "temporal": _temporal, "stack": _stack, "acquisition": _acquisition}
AMBIGUOUS = _nothing


def make_series(folder: Path, change) -> list[list[Path]]:
    """Write two volumes of the 3-slice series into ``folder`` (one new set of UIDs; file names
    interleaved so that no name tells the volumes apart), each image changed by
    ``change(ds, volume, slice_index)``; return the files of each volume."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    volumes: list[list[Path]] = [[], []]
    for j, source in enumerate(sorted(SERIES.glob("*.dcm"))):
        for k in range(2):
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = 2 * j + k + 1
            if k:
                pixels = ds.pixel_array
                ds.PixelData = np.ascontiguousarray(np.roll(pixels, SHIFT_COLUMNS, axis=1)).tobytes()
            change(ds, k, j)
            path = folder / f"im{2 * j + k:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            volumes[k].append(path)
    return volumes


def copy_volume(files: list[Path], folder: Path) -> Path:
    """A folder holding ``files`` alone: one volume as a series of its own."""
    folder.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, folder / path.name)
    return folder


def make_enhanced_temporal(folder: Path) -> tuple[Path, list[list[Path]]]:
    """One Enhanced CT file (``folder/enhanced.dcm``) holding the two temporal positions of the
    ``temporal`` series as its frames, interleaved (frame 2k + 1 of position 1, 2k + 2 of position
    2), each frame's TemporalPositionIndex in its FrameContentSequence and a dimension of its own;
    and the single-frame files of each position (``folder/slices``), the oracle's volumes."""
    import pydicom

    from tests.enhanced_ct import enhanced_ct

    volumes = make_series(folder / "slices", KINDS["temporal"])
    ds = enhanced_ct([pydicom.dcmread(path) for path in sorted((folder / "slices").iterdir())])
    ds.DimensionIndexSequence.append(pydicom.Dataset())
    ds.DimensionIndexSequence[1].DimensionOrganizationUID = ds.DimensionIndexSequence[0].DimensionOrganizationUID
    ds.DimensionIndexSequence[1].DimensionIndexPointer = pydicom.tag.Tag("TemporalPositionIndex")
    ds.DimensionIndexSequence[1].FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        content = item.FrameContentSequence[0]
        content.TemporalPositionIndex = 1 + k % 2
        content.DimensionIndexValues = [1 + k // 2, 1 + k % 2]
    path = folder / "enhanced" / "enhanced.dcm"
    path.parent.mkdir()
    ds.save_as(path, enforce_file_format=True)
    return path, volumes


def make_one_series(folder: Path, change=None, scouts: int = 0, name=lambda j: f"im{j:02d}.dcm") -> list[Path]:
    """Write the 3-slice series into ``folder`` (one new set of UIDs), slice j changed by
    ``change(ds, j)`` and named ``name(j)``, plus ``scouts`` localizers (ImageType LOCALIZER, a
    coronal view, InstanceNumber 1 ahead of the slices', named ``name(3)``, ...); return the slices' files."""
    import copy

    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    slices = []
    for j, source in enumerate(sorted(SERIES.glob("*.dcm"))):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = j + 2
        if change is not None:
            change(ds, j)
        slices.append(ds)
    for k in range(scouts):
        scout = copy.deepcopy(slices[0])
        scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        scout.InstanceNumber, scout.ImageType = 1, ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        scout.save_as(folder / name(len(slices) + k), enforce_file_format=True)
    files = []
    for j, ds in enumerate(slices):
        files.append(folder / name(j))
        ds.save_as(files[-1], enforce_file_format=True)
    return files
