"""CT data: the Volume record, readers for DICOM, NIfTI and slice folders and for label files
(NIfTI, NRRD, DICOM SEG), a phantom generator, and case-level splits. Nothing here imports
torch: the runtime reads data with it too."""

from __future__ import annotations

import importlib

# Names resolve on first use (PEP 562), so a caller that needs only Volume or one reader does
# not pay for importing pydicom, nibabel (and the scipy it pulls in) and Pillow at start-up.
_HOMES = {
    "DicomSeriesInfo": "dicom", "read_dicom_series": "dicom", "read_dicom_series_with_refs": "dicom",
    "read_label_file": "labels", "read_nifti": "nifti", "read_nifti_dataset": "nifti", "open_dataset": "open",
    "PHANTOM_LABELS": "phantom", "synth_phantom": "phantom", "write_phantom_dataset": "phantom",
    "CHEST_LABELS": "chest_phantom", "synth_chest_phantom": "chest_phantom",
    "read_slice_folder": "slices", "read_split": "splits", "split_cases": "splits", "write_split": "splits",
    "Volume": "volume", "SliceSet": "slice_set", "check_window": "slice_set", "map_labels": "slice_set",
    "preprocess_stack": "slice_set",
}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'edgeseg.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgeseg.data.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "CHEST_LABELS",
    "PHANTOM_LABELS",
    "DicomSeriesInfo",
    "SliceSet",
    "Volume",
    "check_window",
    "map_labels",
    "open_dataset",
    "preprocess_stack",
    "read_dicom_series",
    "read_dicom_series_with_refs",
    "read_label_file",
    "read_nifti",
    "read_nifti_dataset",
    "read_slice_folder",
    "read_split",
    "split_cases",
    "synth_chest_phantom",
    "synth_phantom",
    "write_phantom_dataset",
    "write_split",
]
