"""``auto`` on a bundle exported before the manifest listed the gate's runners (no ``scored``):
the rows of its ``parity.json`` are the record where they are this bundle's (file and sha256 of
each row match its artifacts), so OpenVINO, which that gate ran, keeps its INT8 graph without
``edgeseg gate``; a report that is not this bundle's widens nothing.

Real ``edgeseg predict`` and ``inspect`` processes on copies of the suite's bundle
(tests/old_bundles.py); ``EDGESEG_BACKEND_PROBE=0`` makes ``auto`` take its fixed order
(OpenVINO INT8 before ONNX Runtime INT8), so which of them the rows allow decides the backend.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.old_bundles import old_bundle

pytest.importorskip("openvino")

HU = np.random.default_rng(3).normal(40, 60, size=(3, 64, 64)).astype(np.float32)


def _edgeseg(*args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg", *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, EDGESEG_CACHE_DIR=str(tmp_path / "cache"),
                                                 EDGESEG_BACKEND_PROBE="0"))


def _predict(bundle, backend, tmp_path) -> tuple[str, np.ndarray]:
    """The backend ``predict --backend BACKEND`` loaded, and its labels."""
    hu, out = tmp_path / "hu.npy", tmp_path / f"labels-{backend.replace(':', '-')}.npy"
    np.save(hu, HU)
    done = _edgeseg("predict", bundle, hu, "--out", out, "--backend", backend, tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    loaded = next(line for line in done.stderr.splitlines() if line.startswith("loaded "))
    return loaded.split(": backend ", 1)[1].split()[0], np.load(out)


@pytest.mark.parametrize("variant, backend", [("as-exported", "openvino:int8"),
                                              ("rows-without-sha256", "onnxruntime:int8"),
                                              ("a-row-of-other-bytes", "onnxruntime:int8"),
                                              ("a-failed-row-not-excluded", "onnxruntime:int8"),
                                              ("no-openvino-rows", "onnxruntime:int8")])
def test_auto_runs_what_the_bundles_own_rows_record(variant, backend, bundle_dir, tmp_path):
    copy = old_bundle(bundle_dir, tmp_path / "bundle", variant)
    chosen, labels = _predict(copy, "auto", tmp_path)
    assert chosen == backend
    named, expected = _predict(copy, backend, tmp_path)
    assert named == backend and np.array_equal(labels, expected)


def test_inspect_lists_what_auto_skips_by_the_rows(bundle_dir, tmp_path):
    """The rows name OpenVINO on the FP32 graph only: it is skipped on INT8 with the gate's reason,
    and inspect says where the record came from."""
    copy = old_bundle(bundle_dir, tmp_path / "bundle", "as-exported")
    report = copy / "parity.json"
    report.write_text(report.read_text().replace('"runner": "openvino"', '"runner": "openvino-cpu"', 1))
    # the first openvino row is model.onnx's: now it names a runner that does not exist, so the FP32
    # graph lost its OpenVINO row while the INT8 graph keeps its own
    done = _edgeseg("inspect", copy, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {tuple(line.split()[:2]): line for line in done.stdout.splitlines()}
    fp32, int8 = rows[("onnx-fp32", "model.onnx")], rows[("onnx-int8", "model.int8.onnx")]
    assert "openvino (not scored by the export gate" in fp32 and "openvino" not in int8
    assert "auto takes them from parity.json's rows" in done.stdout
