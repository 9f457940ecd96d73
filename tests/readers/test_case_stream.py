"""A data source read one case at a time gives what open_dataset gives read whole: the same cases,
in the same order, with the same labels; where the case ids are known before reading, one reader
per case; and the same refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import pytest

from edgeseg.data import open_dataset, write_phantom_dataset
from edgeseg.data.case_stream import open_case_readers
from edgeseg.data.phantom import phantom_geometry
from edgeseg.errors import DataError

SHAPE, SPACING = phantom_geometry(32, 4)


def _signature(volumes) -> list[tuple]:
    return [(v.case_id, v.source, v.content_sha256(), v.axes_mm.tolist()) for v in volumes]


def _read_in_turn(readers) -> list:
    return [volume for reader in readers for volume in reader.read()]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stream")
    nifti = write_phantom_dataset(root / "nifti", 3, seed=2, shape=SHAPE, spacing=SPACING)
    dicom = write_phantom_dataset(root / "dicom", 3, seed=3, shape=SHAPE, spacing=SPACING, image_format="dicom")
    return {"nifti": nifti, "dicom": dicom}


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_a_dataset_folder_is_one_reader_per_case_giving_open_datasets_volumes(datasets, kind):
    readers = open_case_readers(datasets[kind])
    assert [r.case_id for r in readers] == ["case_000", "case_001", "case_002"]
    streamed = _read_in_turn(readers)
    assert all(v.label is not None for v in streamed)
    assert _signature(streamed) == _signature(open_dataset(datasets[kind]))


def test_a_phantom_is_one_reader_per_case():
    source = "phantom:cases=3,size=32,slices=4,seed=9"
    readers = open_case_readers(source)
    assert [r.case_id for r in readers] == ["case_000", "case_001", "case_002"]
    assert _signature(_read_in_turn(readers)) == _signature(open_dataset(source))


def test_sources_whose_cases_are_known_only_once_read_are_one_reader(datasets):
    image = datasets["nifti"] / "imagesTr" / "case_001.nii.gz"
    label = datasets["nifti"] / "labelsTr" / "case_001.nii.gz"
    for source, options in [(image, {}), (image, {"label_file": label}), (datasets["dicom"] / "case_000", {})]:
        readers = open_case_readers(source, **options)
        assert [r.case_id for r in readers] == [None]
        assert _signature(_read_in_turn(readers)) == _signature(open_dataset(source, **options))


def test_two_files_of_one_case_id_are_refused_as_open_dataset_refuses_them(datasets, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(datasets["nifti"] / "imagesTr" / "case_000.nii.gz", flat / "a.nii.gz")
    nib.save(nib.load(datasets["nifti"] / "imagesTr" / "case_001.nii.gz"), flat / "a.nii")
    with pytest.raises(DataError) as whole:
        open_dataset(flat)
    with pytest.raises(DataError) as streamed:
        _read_in_turn(open_case_readers(flat))
    assert str(streamed.value) == str(whole.value) and "appears twice" in str(whole.value)


def test_a_stray_series_label_is_refused_as_open_dataset_refuses_it(datasets, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(datasets["dicom"], tree)
    shutil.copy(tree / "labelsTr" / "case_000.nii.gz", tree / "labelsTr" / "case_009.nii.gz")
    with pytest.raises(DataError) as whole:
        open_dataset(tree)
    with pytest.raises(DataError) as streamed:
        _read_in_turn(open_case_readers(tree))
    assert str(streamed.value) == str(whole.value) and "has no series folder" in str(whole.value)
