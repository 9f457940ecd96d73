"""An input whose field of view (rows x row spacing) is far from the training data's was resized to
the model's size and segmented without a word, the anatomy at a scale the model never saw. The
bundle now records the training cases' FOV range, and ``edgeseg predict`` says so in one warning
line (or refuses, with EDGESEG_FOV_CHECK=refuse, writing nothing); an input inside the range, an
input without spacing, and a bundle without the record stay silent.

The test bundle is trained on phantoms of 64 x 3.0 mm = 192 mm (edgeseg.data.phantom keeps the
phantom's FOV whatever its size); the inputs here are phantoms written as NIfTI or DICOM at 64 x
9.0 mm = 576 mm (3 x) and at 128 x 1.5 mm = 192 mm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.data.phantom import write_phantom_dataset
from tests.old_bundles import old_bundle

LEGACY_BUNDLE = Path(__file__).parents[1] / "data" / "legacy" / "bundle-2026-11-25"


def edgeseg(*args, **env):
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **env})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """``{"nifti-3x", "dicom-3x", "nifti-1x"}``: one phantom case each."""
    root = tmp_path_factory.mktemp("fov-inputs")
    wide = {"shape": (4, 64, 64), "spacing": (2.5, 9.0, 9.0)}
    nifti = write_phantom_dataset(root / "nifti-3x", cases=1, seed=3, **wide)
    dicom = write_phantom_dataset(root / "dicom-3x", cases=1, seed=3, image_format="dicom", **wide)
    same = write_phantom_dataset(root / "nifti-1x", cases=1, seed=3, shape=(4, 128, 128), spacing=(2.5, 1.5, 1.5))
    return {"nifti-3x": nifti / "imagesTr" / "case_000.nii.gz", "dicom-3x": dicom / "case_000",
            "nifti-1x": same / "imagesTr" / "case_000.nii.gz"}


def _fov_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "field of view" in line]


def test_the_bundle_records_the_fov_of_its_training_volumes(bundle_dir, trained_checkpoint):
    """The oracle: the training split's phantom volumes, their (Y, X) shape times their spacing."""
    import torch

    from edgeseg.data.open import open_dataset

    payload = torch.load(trained_checkpoint, weights_only=True)
    train_cases = set(payload["split"]["train"])
    volumes = [v for v in open_dataset(payload["train_config"]["data"]) if v.case_id in train_cases]
    assert len(volumes) == len(train_cases) >= 2
    fovs = [max(v.hu.shape[1] * v.spacing[1], v.hu.shape[2] * v.spacing[2]) for v in volumes]
    spacings = np.array([v.spacing[1:] for v in volumes])
    record = json.loads((bundle_dir / "manifest.json").read_text())["training_fov"]
    assert record == {"fov_mm": [pytest.approx(min(fovs)), pytest.approx(max(fovs))],
                      "spacing_mm": [pytest.approx(spacings.min()), pytest.approx(spacings.max())],
                      "cases": len(volumes)}
    assert record["fov_mm"] == [pytest.approx(192.0)] * 2  # 64 px x 3 mm: the docstring's figures
    assert payload["training_fov"] == record


@pytest.mark.parametrize("kind", ["nifti-3x", "dicom-3x"])
def test_three_times_the_training_fov_warns_in_one_line(bundle_dir, inputs, kind, tmp_path):
    out = tmp_path / "labels.nii.gz"
    done = edgeseg("predict", bundle_dir, inputs[kind], "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    lines = _fov_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("edgeseg: warning: "), done.stderr
    assert "field of view 576 mm (64 x 9 mm)" in lines[0] and "192-192 mm" in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["nifti-3x", "dicom-3x"])
def test_refusal_mode_exits_non_zero_in_one_line_and_writes_nothing(bundle_dir, inputs, kind, tmp_path,
                                                                   assert_one_line_error):
    out = tmp_path / "labels.nii.gz"
    done = edgeseg("predict", bundle_dir, inputs[kind], "--out", out, "--quiet", EDGESEG_FOV_CHECK="refuse")
    assert_one_line_error(done, "field of view 576 mm (64 x 9 mm) lies outside the 192-192 mm")
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # cache: the backend probe's


def test_an_input_inside_the_range_says_nothing(bundle_dir, inputs, tmp_path):
    done = edgeseg("predict", bundle_dir, inputs["nifti-1x"], "--out", tmp_path / "labels.nii.gz", "--quiet",
                   EDGESEG_FOV_CHECK="refuse")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_an_input_without_spacing_says_nothing(bundle_dir, inputs, tmp_path):
    """An NPY array carries no spacing (read as 1 mm): 64 px would be 64 mm, a third of the range."""
    import nibabel as nib

    array = tmp_path / "case.npy"
    np.save(array, np.asarray(nib.load(inputs["nifti-3x"]).dataobj).transpose(2, 1, 0).astype(np.float32))
    done = edgeseg("predict", bundle_dir, array, "--out", tmp_path / "labels.npy", "--quiet",
                   EDGESEG_FOV_CHECK="refuse")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # given with --spacing, the same array is judged
    done = edgeseg("predict", bundle_dir, array, "--out", tmp_path / "again.npy", "--quiet", "--spacing", "2.5,9,9")
    assert len(_fov_lines(done.stderr)) == 1, done.stderr


@pytest.mark.parametrize("old", ["old-bundles-variant", "legacy-2026-11-25"])
def test_a_bundle_without_the_record_stays_silent_and_inspect_says_not_recorded(bundle_dir, inputs, old, tmp_path):
    bundle = (old_bundle(bundle_dir, tmp_path / "old", "as-exported") if old == "old-bundles-variant"
              else Path(shutil.copytree(LEGACY_BUNDLE, tmp_path / "old")))
    assert "training_fov" not in json.loads((bundle / "manifest.json").read_text())
    done = edgeseg("predict", bundle, inputs["nifti-3x"], "--out", tmp_path / "labels.nii.gz", "--quiet",
                   EDGESEG_FOV_CHECK="refuse")
    assert done.returncode == 0 and _fov_lines(done.stderr) == [], done.stderr
    shown = edgeseg("inspect", bundle)
    assert [line for line in shown.stdout.splitlines() if line.startswith("fov ")] == [
        "fov      not recorded (no field-of-view check at prediction)"], shown.stdout


def test_inspect_shows_the_recorded_range(bundle_dir, trained_checkpoint):
    for target in (bundle_dir, trained_checkpoint):
        shown = edgeseg("inspect", target)
        lines = [line for line in shown.stdout.splitlines() if line.startswith("fov ")]
        assert len(lines) == 1 and "FOV 192-192 mm (longer side), pixel spacing 3-3 mm" in lines[0], shown.stdout


def test_an_unknown_mode_is_refused_in_one_line(bundle_dir, inputs, tmp_path, assert_one_line_error):
    done = edgeseg("predict", bundle_dir, inputs["nifti-1x"], "--out", tmp_path / "labels.nii.gz", "--quiet",
                   EDGESEG_FOV_CHECK="strict")
    assert_one_line_error(done, "EDGESEG_FOV_CHECK=strict is not one of warn, refuse, off")
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []
