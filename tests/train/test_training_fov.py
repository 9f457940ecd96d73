"""A run records the field of view (longer side, rows x row spacing) and pixel-spacing range of its
training cases in its checkpoints, computed here again with numpy from the NIfTI headers of the
cases the split trained on; a run on slices without spacing (PNG) records none, and a resumed run
keeps the record."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from edgeseg.data.phantom import write_phantom_dataset
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

# (rows = columns, pixel spacing mm): FOVs of 96, 160, 192, 120 and 140 mm, one of them not square
GEOMETRIES = [((64, 64), 1.5), ((80, 64), 2.0), ((64, 64), 3.0), ((48, 48), 2.5), ((56, 56), 2.5)]


@pytest.fixture(scope="module")
def nifti_data(tmp_path_factory) -> Path:
    """Five phantom cases of the GEOMETRIES in one MSD-layout folder."""
    root = tmp_path_factory.mktemp("fov-data")
    data = root / "data"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
    for k, ((rows, cols), pixel) in enumerate(GEOMETRIES):
        one = write_phantom_dataset(root / f"one-{k}", cases=1, seed=k, shape=(6, rows, cols), spacing=(2.5, pixel, pixel))
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(one / sub / "case_000.nii.gz", data / sub / f"case_{k:03d}.nii.gz")
    return data


def _tiny(data, out: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(data=str(data), out=str(out), size=32, base=4, depth=2, epochs=1, batch_size=8,
                                 lr=5e-3, window=(-200.0, 300.0), amp="off", fractions=(0.6, 0.2, 0.2), threads=1,
                                 workers=0), **kw})


def _oracle(data: Path, cases: list[str]) -> dict:
    """The record from the files alone: NIfTI voxel (i, j) sizes and the in-plane shape."""
    fovs, pixels = [], []
    for case in cases:
        header = nib.load(data / "imagesTr" / f"{case}.nii.gz").header
        shape, zooms = np.array(header.get_data_shape()[:2]), np.array(header.get_zooms()[:2], dtype=np.float64)
        fovs.append(float(np.max(shape * zooms)))
        pixels += list(zooms)
    return {"fov_mm": [min(fovs), max(fovs)], "spacing_mm": [float(min(pixels)), float(max(pixels))],
            "cases": len(cases)}


def test_the_checkpoint_records_the_fov_and_spacing_of_the_training_cases(nifti_data, tmp_path):
    cfg = _tiny(nifti_data, tmp_path / "run", epochs=2)
    train(cfg, progress=False)
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    train_cases = payload["split"]["train"]
    assert len(train_cases) >= 2
    expected = _oracle(nifti_data, train_cases)
    assert expected["fov_mm"][0] < expected["fov_mm"][1]  # the split trains on cases of different FOVs
    record = payload["training_fov"]
    assert record["cases"] == expected["cases"]
    for key in ("fov_mm", "spacing_mm"):
        assert record[key] == pytest.approx(expected[key], abs=1e-3), key
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["training_fov"] == record
    # --resume trains on the same cases (it refuses other data), so the record stays
    train(_tiny(nifti_data, tmp_path / "run", epochs=3), resume=True, progress=False)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["training_fov"] == record


def test_slices_without_spacing_record_none(lesion_slices, tmp_path):
    cfg = _tiny(lesion_slices(count=6), tmp_path / "run", labels={"faint": [1], "bright": [2]}, window=(0.0, 255.0),
                case_pattern="file")
    train(cfg, progress=False)
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=True)["training_fov"] is None


@pytest.mark.parametrize("bad", ["192", [150.0, 450.0], {"fov_mm": [450.0, 150.0], "spacing_mm": [1.0, 1.0], "cases": 2}])
def test_a_checkpoint_with_a_malformed_record_is_refused_in_one_line(bad, trained_checkpoint, tmp_path):
    """export and inspect read it as the runtime reads a manifest's: no half-understood range."""
    from edgeseg.errors import CheckpointError
    from edgeseg.models.checkpoint import read_checkpoint

    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["training_fov"] = bad
    torch.save(payload, tmp_path / "best.pt")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "best.pt")
    assert "is not an edgeseg checkpoint: its training_fov must be null or" in str(caught.value)
