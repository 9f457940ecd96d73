"""The Enhanced CT test helper (tests/enhanced_ct.py) itself: its object is a conformant Enhanced
CT Image (dciodvfy), and each frame holds its source slice's pixels, position and rescale, read
back with pydicom alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.enhanced_ct import ENHANCED_CT, read_slices, rescale_slices, write_enhanced_ct

SERIES = Path(__file__).resolve().parent / "data" / "dcmqi_ct_liver" / "ct-3slice"


def _group(ds, k: int, name: str):
    """Frame k's item of functional group ``name``, per-frame or shared."""
    frame = ds.PerFrameFunctionalGroupsSequence[k]
    return (frame if name in frame else ds.SharedFunctionalGroupsSequence[0])[name][0]


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1]])
def test_frames_hold_their_source_slices(tmp_path, order):
    slices = read_slices(SERIES)
    ds = pydicom.dcmread(write_enhanced_ct(slices, tmp_path / "e.dcm", order))
    assert ds.SOPClassUID == ENHANCED_CT and int(ds.NumberOfFrames) == 3
    for k, source in enumerate(order):
        np.testing.assert_array_equal(ds.pixel_array[k], slices[source].pixel_array)
        assert list(_group(ds, k, "PlanePositionSequence").ImagePositionPatient) == \
            list(slices[source].ImagePositionPatient)
    # one rescale for all: shared, not repeated per frame
    assert "PixelValueTransformationSequence" in ds.SharedFunctionalGroupsSequence[0]


def test_rescaled_slices_keep_their_hu_and_go_per_frame(tmp_path):
    slices = read_slices(SERIES)
    rescales = [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0)]
    changed = rescale_slices(slices, rescales)
    for before, after, (slope, intercept) in zip(slices, changed, rescales):
        kept = before.pixel_array != -2000  # padding stays as stored
        hu = before.pixel_array * 1.0 - 1024.0
        np.testing.assert_array_equal((after.pixel_array * slope + intercept)[kept], hu[kept])
    ds = pydicom.dcmread(write_enhanced_ct(changed, tmp_path / "e.dcm"))
    assert [float(_group(ds, k, "PixelValueTransformationSequence").RescaleSlope) for k in range(3)] == [1, 0.5, 1]
    assert "PixelValueTransformationSequence" not in ds.SharedFunctionalGroupsSequence[0]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
@pytest.mark.parametrize("rescaled", [False, True])
def test_the_object_passes_dciodvfy(tmp_path, rescaled):
    slices = read_slices(SERIES)
    if rescaled:
        slices = rescale_slices(slices, [(1.0, -1024.0), (0.5, -1024.0), (1.0, -1000.0)])
    out = write_enhanced_ct(slices, tmp_path / "e.dcm", [1, 2, 0])
    done = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    assert "EnhancedCTImage" in lines
    assert [line for line in lines if line.startswith("Error")] == []
    # the only warnings: the source's own patient name form and its private tags
    assert [line for line in lines if line.startswith("Warning") and "Unrecognized tag" not in line
            and "Retired Person Name form" not in line] == []
