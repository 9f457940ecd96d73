"""Values that are not HU reach ``edgeseg predict`` as real files: a DICOM CT series whose stored
values lost their RescaleIntercept, an 8-bit windowed picture saved as NIfTI, HU clipped at 0.
Each was segmented with exit status 0 and a plausible mask (the liver model painted 13 times the
liver; the chest model a few voxels of every lesion class); now each is one line and exit status 2,
with no output, while HU, and HU clipped at 0 where the model's window starts at 0, still segment."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _synth(out, kind: str, fmt: str, size: int) -> None:
    done = edgeseg("data", "synth", "--kind", kind, "--format", fmt, "--out", out, "--cases", 1, "--size", size,
                   "--slices", 8, "--seed", 3, "--quiet")
    assert done.returncode == 0, done.stderr


def _refused(done, out, words: str = "none below 0 HU") -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error: ") and words in lines[0], done.stderr
    assert "RescaleIntercept" in lines[0]
    assert not out.exists()


def test_dicom_series_without_rescale_intercept_is_refused(bundle_dir, tmp_path):
    _synth(tmp_path / "phantom", "abdomen", "dicom", 64)
    series = tmp_path / "phantom" / "case_000"
    ok = edgeseg("predict", bundle_dir, series, "--out", tmp_path / "hu.nii.gz", "--quiet")
    assert ok.returncode == 0, ok.stderr
    # as a scanner stores them: unsigned, HU + 1024, air near 0; then the rescale fields dropped
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = np.clip(np.round(hu) + 1024, 0, 4095).astype(np.uint16)
        ds.PixelRepresentation = 0
        ds.PixelData = stored.tobytes()
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(path)
    values = [pydicom.dcmread(p).pixel_array for p in series.iterdir()]
    assert min(v.min() for v in values) >= 0 and max(v.max() for v in values) > 1000  # the oracle: not HU
    out = tmp_path / "stored.nii.gz"
    # the reader refuses unsigned pixels without an intercept on its own, in one line and without
    # the warning it gives signed ones (so without --quiet: no second line saying the same)
    done = edgeseg("predict", bundle_dir, series, "--out", out)
    _refused(done, out, "lacks RescaleIntercept and its pixels are unsigned")


@pytest.mark.parametrize("negative", ["padding", "one-pixel"])
def test_dicom_series_without_rescale_intercept_is_refused_despite_values_below_zero(negative, bundle_dir, tmp_path):
    """Signed stored values (HU + 1024) with the padding outside the field of view at -2000, as
    some scanners store it, or with one pixel at -1: values below 0 exist, but none in the air and
    fat range (beyond the noise of the air round the body, under 0.1 %), so they are no HU: refused
    in one line (both were segmented, with a warning, while one value below 0 was taken for air)."""
    _synth(tmp_path / "phantom", "abdomen", "dicom", 64)
    series = tmp_path / "phantom" / "case_000"
    for path in series.iterdir():
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.int32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        stored = (np.round(hu) + 1024).astype(np.int16)
        if negative == "padding":
            stored[:, :4] = -2000
        else:
            stored[0, 0] = -1
        ds.PixelData = stored.tobytes()
        del ds.RescaleIntercept
        ds.save_as(path)
    values = np.stack([pydicom.dcmread(p).pixel_array for p in series.iterdir()])
    assert values.min() < 0 and values.max() > 1000  # the oracle: stored values, below 0 only where not air
    air = np.count_nonzero((values >= -1200) & (values <= -50))  # noise of the air outside the body
    assert air * 1000 < values.size
    out = tmp_path / "stored.nii.gz"
    # one line, the refusal: the warning of the missing intercept says the same and is not added
    _refused(edgeseg("predict", bundle_dir, series, "--out", out, "--quiet"), out,
             f"{air} of {values.size} voxels in the air and fat range -1200..-50 HU (under 0.1 %)")


def test_windowed_8bit_nifti_is_refused_by_a_lung_window_model(chest_bundle_run, tmp_path):
    _synth(tmp_path / "phantom", "chest", "nifti", 96)
    image = nib.load(tmp_path / "phantom" / "imagesTr" / "case_000.nii.gz")
    hu = np.asarray(image.dataobj, dtype=np.float32)
    assert hu.min() < -500  # lung and air: the HU the model's window starts in
    bundle = chest_bundle_run / "bundle"
    ok = edgeseg("predict", bundle, tmp_path / "phantom" / "imagesTr" / "case_000.nii.gz", "--out",
                 tmp_path / "hu.nii.gz", "--quiet")
    assert ok.returncode == 0, ok.stderr
    picture = np.round(np.clip((hu + 1350) / 1500, 0, 1) * 255).astype(np.uint8)  # the lung window as 0..255
    nib.save(nib.Nifti1Image(picture, image.affine), tmp_path / "lung-window.nii.gz")
    out = tmp_path / "picture.nii.gz"
    _refused(edgeseg("predict", bundle, tmp_path / "lung-window.nii.gz", "--out", out, "--quiet"), out)


def test_hu_clipped_at_zero_still_segments_where_the_window_starts_at_zero(bundle_dir, tmp_path):
    """The liver model's window is 0..255: HU clipped to it (as its training slices are stored)
    are what it sees anyway, so they are taken and give the labels of the HU themselves."""
    pytest.importorskip("nibabel")
    _synth(tmp_path / "phantom", "abdomen", "nifti", 64)
    source = tmp_path / "phantom" / "imagesTr" / "case_000.nii.gz"
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.clip(np.asarray(image.dataobj), 0, 255).astype(np.int16), image.affine),
             tmp_path / "clipped.nii.gz")
    masks = []
    for name, path in (("hu", source), ("clipped", tmp_path / "clipped.nii.gz")):
        done = edgeseg("predict", bundle_dir, path, "--out", tmp_path / f"{name}.npy", "--quiet")
        assert done.returncode == 0, done.stderr
        masks.append(np.load(tmp_path / f"{name}.npy"))
    assert masks[0].any()
    np.testing.assert_array_equal(masks[0], masks[1])
