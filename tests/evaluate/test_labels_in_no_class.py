"""``edgeseg evaluate`` of label maps whose values name none of the model's classes (the liver
stored as 7, a data set without dataset.json) printed Dice 0.0000 for every case with exit status
0 and no word: a verification figure that says the model fails, where the labels were read wrong.
Now one warning line names the values, the cases and the mapping, and says to pass --labels."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_labels_of_no_class_are_warned_of_once(trained_checkpoint, tmp_path):
    done = edgeseg("data", "synth", "--out", tmp_path / "data", "--cases", 2, "--size", 48, "--slices", 6, "--quiet")
    assert done.returncode == 0, done.stderr
    (tmp_path / "data" / "dataset.json").unlink()  # no names: the values alone say what a voxel is
    control = edgeseg("evaluate", trained_checkpoint, "--data", tmp_path / "data", "--split", "all", "--quiet")
    assert control.returncode == 0, control.stderr
    assert "no class" not in control.stderr
    for path in sorted((tmp_path / "data" / "labelsTr").iterdir()):
        image = nib.load(path)
        label = np.asarray(image.dataobj).astype(np.uint8)
        assert (label == 1).any()
        label[label != 0] = 7  # every structure stored under a value the model has no class for
        nib.save(nib.Nifti1Image(label, image.affine), path)
    done = edgeseg("evaluate", trained_checkpoint, "--data", tmp_path / "data", "--split", "all", "--quiet")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "no class" in line or "none of which" in line]
    assert len(warned) == 1 and warned[0].startswith("edgeseg: warning: "), done.stderr
    assert "2 case(s) (case_000, case_001)" in warned[0] and "values 7" in warned[0] and "liver=1" in warned[0]
    assert "--labels" in warned[0]
    fixed = edgeseg("evaluate", trained_checkpoint, "--data", tmp_path / "data", "--split", "all", "--labels",
                    "liver=7", "--quiet")
    assert fixed.returncode == 0 and "none of which" not in fixed.stderr, fixed.stderr
