"""``edgeseg predict`` on a volume holds a few copies of it at most, whatever its length.

A 512 x 512 x 600 CT is 300 MB as int16; the box next to a scanner may have 2-4 GB. The peak
of a whole prediction (read, segment, write, summary line) is measured with tracemalloc, which
sees numpy's allocations, against the size of the volume as stored.
"""

from __future__ import annotations

import re
import tracemalloc

import nibabel as nib
import numpy as np

from edgeseg.cli.main import cli
from tests.guarded_cli import GuardedCliRunner

AFFINE = np.diag([0.7, 0.7, 1.0, 1.0])


def _write_ct(path, slices: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    stored = rng.integers(-200, 300, size=(256, 256, slices)).astype(np.int16)
    stored[64:192, 64:192] = 60  # a block of soft tissue for the model to find
    image = nib.Nifti1Image(stored, AFFINE)
    image.set_qform(AFFINE, code=1)
    image.set_sform(AFFINE, code=1)
    nib.save(image, path)
    return stored


def _predict(bundle, source, out):
    return GuardedCliRunner().invoke(cli, ["predict", str(bundle), str(source), "--out", str(out),
                                           "--backend", "onnxruntime:fp32", "--quiet"])


def test_predict_of_a_nifti_volume_peaks_near_three_int16_volumes(bundle_dir, tmp_path):
    # a first run imports every module the second needs, so that the peak measured is the volume's
    _write_ct(tmp_path / "small.nii.gz", 4)
    assert _predict(bundle_dir, tmp_path / "small.nii.gz", tmp_path / "small-labels.nii.gz").exit_code == 0
    stored = _write_ct(tmp_path / "ct.nii.gz", 96)

    tracemalloc.start()
    try:
        result = _predict(bundle_dir, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result.exit_code == 0, result.output
    labels = np.asarray(nib.load(tmp_path / "labels.nii.gz").dataobj)
    # the summary line's count, against the labels written
    assert re.search(r"voxels liver=(\d+) ", result.output).group(1) == str(np.count_nonzero(labels == 1))
    # the stored int16 voxels and the float32 HU while reading; then the HU, the uint8 labels and
    # the output's copy of them. Before: 6.4x, the reader's float64/float32 copies and the summary's
    # np.bincount, which converts the whole label map to int64 (8 bytes a voxel) first, and a 64 MB
    # buffer allocated to read the bundle's manifest.
    assert peak <= 3.5 * stored.nbytes, f"peak {peak / 2**20:.1f} MB for a {stored.nbytes / 2**20:.1f} MB int16 volume"
