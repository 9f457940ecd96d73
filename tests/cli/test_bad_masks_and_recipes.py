"""Label-map bad inputs through `edgeseg train` and `edgeseg data info`: one 'edgeseg: error:'
line naming the problem, and no run folder written. Synthetic masks only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def label_folder(tmp_path):
    folder = tmp_path / "slices"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i, (rows, cols) in enumerate(((30, 40), (36, 28), (32, 32))):
        Image.fromarray(np.full((rows, cols), 90, np.uint8)).save(folder / "images" / f"{i:03d}.png")
        label = np.zeros((rows, cols), np.uint8)
        label[5:12, 5:12], label[15:20, 15:20] = 1, i + 1     # slice 002 holds a 3
        Image.fromarray(label).save(folder / "masks" / f"{i:03d}.png")
    return folder


TRAIN = ("--case-pattern", "file", "--window", "0,255", "--size", 32, "--base", 4, "--depth", 2, "--epochs", 1,
         "--quiet")


def test_label_value_outside_labels(label_folder, assert_one_line_error):
    out = label_folder.parent / "run"
    proc = edgeseg("train", "--data", label_folder, "--out", out, "--labels", "ggo=1,consolidation=2", *TRAIN)
    assert_one_line_error(proc, "002.png holds label value 3, which --labels does not map")
    assert not out.exists()
    info = edgeseg("data", "info", label_folder, "--case-pattern", "file", "--labels", "a=1+2", "--quiet")
    assert_one_line_error(info, "label value 3")


def test_colour_palette_mask(label_folder, assert_one_line_error):
    victim = label_folder / "masks" / "001.png"
    image = Image.fromarray(np.asarray(Image.open(victim)), mode="P")
    image.putpalette([0, 0, 0, 0, 200, 0] + [128] * (254 * 3))
    image.save(victim)
    out = label_folder.parent / "run"
    proc = edgeseg("train", "--data", label_folder, "--out", out, "--labels", "a=1,b=2,c=3", *TRAIN)
    assert_one_line_error(proc, "palette that is not greyscale classes")
    assert not out.exists()


def test_label_mask_of_another_size(label_folder, assert_one_line_error):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(label_folder / "masks" / "000.png")
    out = label_folder.parent / "run"
    proc = edgeseg("train", "--data", label_folder, "--out", out, "--labels", "a=1,b=2,c=3", *TRAIN)
    assert_one_line_error(proc, "is (8, 8) pixels but its image is (30, 40)")
    assert not out.exists()


def test_data_info_reports_label_maps(label_folder):
    proc = edgeseg("data", "info", label_folder, "--case-pattern", "file", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "masks: label maps; label values 0, 1, 2, 3"
    forced = edgeseg("data", "info", label_folder, "--case-pattern", "file", "--mask", "binary",
                     "--mask-threshold", 1, "--quiet")
    assert forced.stdout.strip().splitlines()[-1].startswith("masks: binary")
