"""libedgeseg honours a bundle's fit=pad: the Python runtime's masks on odd-sized slices, voxel for
voxel, and the same refusal of a slice too thin to pad."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from edgeseg.runtime import Segmenter

ES_EBUNDLE = 16


def odd_hu(slices: int, rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(rows * cols)
    hu = np.full((slices, rows, cols), -1000.0)
    hu[:, rows // 5: rows - rows // 5, cols // 6: cols - cols // 6] = 40
    hu[:, rows // 3: rows // 2, cols // 4: cols // 2] = 200
    return np.ascontiguousarray((hu + rng.normal(0, 30, hu.shape)).astype(np.int16))


@pytest.fixture(scope="module")
def python_pad(pad_bundle):
    with Segmenter.load(pad_bundle, backend="openvino:fp32") as seg:
        assert seg.spec.fit == "pad"
        yield seg


@pytest.mark.parametrize("shape", [(3, 153, 97), (2, 41, 130), (1, 2, 64)])
def test_volume_masks_equal_python_on_odd_sizes(shape, python_pad, pad_bundle, programs, run_raw, tmp_path):
    hu = odd_hu(*shape)
    expected = python_pad.predict_volume(hu)
    got = run_raw(programs["c"], pad_bundle, "fp32", hu, tmp_path)
    assert got.shape == hu.shape
    assert int(np.count_nonzero(got != expected)) == 0


def test_slice_masks_equal_python_on_an_odd_size(python_pad, pad_bundle, programs, run_raw, tmp_path):
    hu = odd_hu(2, 153, 97)
    expected = np.stack([python_pad.predict(s) for s in hu])
    assert len(np.unique(expected)) > 1
    got = run_raw(programs["checks"], pad_bundle, "fp32", hu, tmp_path, mode="slices")
    assert int(np.count_nonzero(got != expected)) == 0


def test_a_slice_too_thin_to_pad_is_refused(pad_bundle, programs, tmp_path):
    hu = odd_hu(1, 2, 300)
    src = tmp_path / "hu.raw"
    hu.astype("<i2").tofile(src)
    result = subprocess.run([str(programs["c"]), str(pad_bundle), "fp32", "1", "2", "300", str(src),
                             str(tmp_path / "labels.raw")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    # the words of the Python runtime's refusal (edgeseg.spec.PreprocessSpec.fit_box)
    assert "a 2x300 slice cannot be padded into 64x64: its short side would scale to 0.427 px" in result.stderr
    assert not (tmp_path / "labels.raw").exists()


def test_an_unknown_fit_is_refused(pad_bundle, tmp_path, run_checks):
    copy = shutil.copytree(pad_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["spec"]["fit"] = "crop"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, message, _ = run_checks("open", copy, "fp32")
    assert code == ES_EBUNDLE and "fit must be stretch or pad" in message
