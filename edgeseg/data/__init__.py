"""CT data: the Volume record, readers for DICOM, NIfTI and slice folders and for label files
(NIfTI, NRRD, DICOM SEG), a phantom generator, and case-level splits. Nothing here imports
torch: the runtime reads data with it too."""

from __future__ import annotations

from edgeseg.data.dicom import DicomSeriesInfo, read_dicom_series, read_dicom_series_with_refs
from edgeseg.data.labels import read_label_file
from edgeseg.data.nifti import read_nifti, read_nifti_dataset
from edgeseg.data.open import open_dataset
from edgeseg.data.phantom import PHANTOM_LABELS, synth_phantom, write_phantom_dataset
from edgeseg.data.slices import read_slice_folder
from edgeseg.data.splits import read_split, split_cases, write_split
from edgeseg.data.volume import Volume

__all__ = [
    "PHANTOM_LABELS",
    "DicomSeriesInfo",
    "Volume",
    "open_dataset",
    "read_dicom_series",
    "read_dicom_series_with_refs",
    "read_label_file",
    "read_nifti",
    "read_nifti_dataset",
    "read_slice_folder",
    "read_split",
    "split_cases",
    "synth_phantom",
    "write_phantom_dataset",
    "write_split",
]
