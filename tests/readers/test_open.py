"""open_dataset: every source kind, and the errors a user meets first."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgeseg.data import open_dataset, synth_phantom
from edgeseg.errors import DataError


def test_each_source_kind(msd_slices, dcmqi, totalseg):
    assert [v.case_id for v in open_dataset(msd_slices)] == ["10001", "10004", "10006"]
    [dicom] = open_dataset(dcmqi / "ct-3slice")
    assert dicom.hu.shape == (3, 512, 512)
    [nifti] = open_dataset(totalseg / "example_ct_sm.nii.gz")
    assert nifti.hu.shape == (30, 101, 122)


def test_phantom_spec():
    volumes = open_dataset("phantom:cases=3,seed=2,size=64,slices=10")
    assert [v.case_id for v in volumes] == ["case_000", "case_001", "case_002"]
    assert volumes[0].hu.shape == (10, 64, 64)
    assert volumes[0].spacing == (2.5, 3.0, 3.0)  # same field of view as 128 x 1.5 mm
    reference = synth_phantom("case_001", 2, shape=(10, 64, 64), spacing=(2.5, 3.0, 3.0))
    np.testing.assert_array_equal(volumes[1].hu, reference.hu)
    assert len(open_dataset("phantom")) == 8
    with pytest.raises(DataError, match="bad phantom option 'colour=red'"):
        open_dataset("phantom:colour=red")


def test_folder_of_series_folders(tmp_path, dcmqi):
    for name in ("patient_b", "patient_a"):
        shutil.copytree(dcmqi / "ct-3slice", tmp_path / name)
    assert [v.case_id for v in open_dataset(tmp_path)] == ["patient_a", "patient_b"]


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found in .*empty"):
        open_dataset(tmp_path / "empty")


def test_slice_options_on_other_data_are_refused(totalseg):
    with pytest.raises(DataError, match="slice folders only"):
        open_dataset(totalseg / "example_ct_sm.nii.gz", intensity="window:-100,400")


def test_a_seg_beside_its_series_folder_becomes_its_label(dcmqi):
    # dcmqi_ct_liver/ holds liver.dcm, a DICOM SEG, next to ct-3slice/: a label, not a series.
    [volume] = open_dataset(dcmqi)
    assert volume.case_id == "ct-3slice"
    assert volume.label is not None and set(np.unique(volume.label)) == {0, 1}
