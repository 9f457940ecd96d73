"""A label off its image's grid is refused by one rule, whether it comes with a NIfTI dataset or
as --label-file: voxel centres within a thousandth of a voxel, checked against a brute-force
placement of every voxel with nibabel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from edgeseg.data import read_nifti
from edgeseg.data.labels import read_label_file
from edgeseg.errors import DataError


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _rotation_x(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    rotation = np.eye(4)
    rotation[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation


def dataset_with_label_affine(tmp_path, totalseg, change) -> tuple:
    """An MSD layout of the TotalSegmentator sample whose label's affine is ``change(affine)``."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    image = tmp_path / "imagesTr" / "ct.nii.gz"
    shutil.copy(totalseg / "example_ct_sm.nii.gz", image)
    source = nib.load(totalseg / "example_seg.nii.gz")
    label = tmp_path / "labelsTr" / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), change(source.affine.copy())), label)
    return image, label


def brute_force_displacement(image, label) -> float:
    """The largest distance between where the label and the image put the same voxel, over all voxels."""
    a, b = nib.load(image), nib.load(label)
    index = np.indices(a.shape).reshape(3, -1).T
    return float(np.linalg.norm(apply_affine(a.affine, index) - apply_affine(b.affine, index), axis=1).max())


def refusals(tmp_path, image, label) -> list[str]:
    """The error of the dataset reader and of --label-file on the same pair (None where accepted)."""
    messages = []
    for read in (lambda: read_nifti(image, label), lambda: read_label_file(label, read_nifti(image))):
        try:
            read()
            messages.append(None)
        except DataError as exc:
            messages.append(str(exc))
    return messages


@pytest.mark.parametrize("change", [
    pytest.param(lambda a: a + np.pad([[0, 0, 0, 0.9]], ((0, 3), (0, 0))), id="origin 0.9 mm off"),
    pytest.param(lambda a: a @ np.diag([1.0, 1.0, 1.003, 1.0]), id="slice step 0.3 % longer"),
    pytest.param(lambda a: _rotation_x(0.05) @ a, id="rotated 0.05 degrees"),
])
def test_a_label_off_the_grid_is_refused_by_both_readers_naming_the_difference(tmp_path, totalseg, change):
    image, label = dataset_with_label_affine(tmp_path, totalseg, change)
    oracle = brute_force_displacement(image, label)
    assert oracle > 3e-3  # a thousandth of the 3 mm voxel
    for message in refusals(tmp_path, image, label):
        assert message is not None and "\n" not in message
        shown = float(re.search(r"voxel centres up to ([0-9.e+-]+) mm", message).group(1))
        assert shown == pytest.approx(oracle, rel=2e-3)
        assert "affine difference label - image" in message and "tolerance 0.001 voxel" in message


@pytest.mark.parametrize("change", [
    pytest.param(lambda a: a, id="same affine"),
    pytest.param(lambda a: a + np.pad([[0, 0, 0, 2e-5]], ((0, 3), (0, 0))), id="float32 rounding of the origin"),
    pytest.param(lambda a: np.diag([1.0, 1.0, 1.0 + 1e-7, 1.0]) @ a, id="float32 rounding of a step"),
])
def test_a_label_written_from_the_same_grid_is_accepted_by_both_readers(tmp_path, totalseg, change):
    image, label = dataset_with_label_affine(tmp_path, totalseg, change)
    assert refusals(tmp_path, image, label) == [None, None]


def test_data_info_refuses_a_dataset_label_half_a_millimetre_off(tmp_path, totalseg, assert_one_line_error):
    dataset_with_label_affine(tmp_path, totalseg, lambda a: a + np.pad([[0, 0, 0, 0.5]], ((0, 3), (0, 0))))
    assert_one_line_error(edgeseg("data", "info", tmp_path, "--quiet"),
                          "does not lie on the grid of image")
