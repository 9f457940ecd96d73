"""A DICOM series whose BodyPartExamined does not hold what the bundle segments (a chest CT into
the liver model) was segmented without a word: a partial liver that reads as a result. Now
``edgeseg predict`` still segments it, with one warning line naming the field and what to check."""

from __future__ import annotations

import subprocess
import sys

import pydicom
import pytest

from edgeseg.runtime.body_parts import body_part_warning


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("body-part")
    done = edgeseg("data", "synth", "--format", "dicom", "--out", root, "--cases", 1, "--size", 48, "--slices", 6,
                   "--quiet")
    assert done.returncode == 0, done.stderr
    return root / "case_000"


def _label_as(series, part: str) -> None:
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = part
        ds.save_as(path)


@pytest.mark.parametrize("part,warned", [("CHEST", True), ("HEAD", True), ("ABDOMEN", False), ("", False),
                                         ("ABD CONTRAST", False)])
def test_predict_warns_of_a_series_of_another_body_part(bundle_dir, series, tmp_path, part, warned):
    _label_as(series, part)
    out = tmp_path / "labels.nii.gz"
    done = edgeseg("predict", bundle_dir, series, "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    assert out.is_file()
    lines = [line for line in done.stderr.splitlines() if "BodyPartExamined" in line]
    if warned:
        assert len(lines) == 1 and lines[0].startswith("edgeseg: warning: "), done.stderr
        assert f"BodyPartExamined {part}" in lines[0] and "abdomen" in lines[0] and "liver" in lines[0]
    else:
        assert lines == [], done.stderr


def test_lung_lesion_classes_are_chest_classes():
    labels = {0: "background", 1: "ggo", 2: "consolidation"}
    assert "chest" in body_part_warning("ABDOMEN", labels)
    assert body_part_warning("chest", labels) is None and body_part_warning("CHESTABDPELVIS", labels) is None
    # a class edgeseg has no region for (a tumour anywhere) is never judged
    assert body_part_warning("HEAD", {0: "background", 1: "tumor"}) is None
