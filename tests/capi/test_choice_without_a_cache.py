"""libedgeseg's "auto" where nothing can be kept (a read-only root, no HOME, an unprivileged user:
tests/confined.py): it chooses by a fixed order without timing (int8, fp32, fp16 among the ONNX
graphs the gate vouches for on OpenVINO: the Python runtime's fixed order for that runner), so
two starts open the same artifact and write the same labels, those of the artifact named.
"""

from __future__ import annotations

import shutil

import numpy as np

from tests.capi.conftest import ROOT
from tests.confined import OUT, confined


def test_two_starts_without_a_cache_open_the_same_artifact_and_write_the_same_labels(
        sdk, build_tools, bundle, phantom_hu, tmp_path, run_raw):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(sdk, out / "sdk")
    shutil.copytree(bundle, out / "bundle")
    rpath = (f"-Wl,-rpath,{OUT}/sdk/lib",)  # the copy, where the confined user sees it, before the build's own
    checks = build_tools.compile(out / "sdk", ROOT / "tests" / "capi" / "capi_checks.c", out / "capi_checks", rpath)
    example = build_tools.compile(out / "sdk", ROOT / "examples" / "c" / "segment_raw.c", out / "segment_raw", rpath)
    phantom_hu.astype("<i2").tofile(out / "hu.raw")
    z, rows, cols = phantom_hu.shape
    opened, labels = [], []
    for start in range(2):
        done = confined([OUT / checks.name, "open", OUT / "bundle", "auto"], out)
        assert done.returncode == 0 and done.stdout.startswith("0\topened"), done.stdout + done.stderr
        opened.append(next(line.split("\t")[1] for line in done.stdout.splitlines() if line.startswith("artifact\t")))
        done = confined([OUT / example.name, OUT / "bundle", "auto", z, rows, cols, OUT / "hu.raw",
                         OUT / f"labels-{start}.raw"], out)
        assert done.returncode == 0, done.stderr
        labels.append(np.fromfile(out / f"labels-{start}.raw", dtype=np.uint8).reshape(phantom_hu.shape))
    # the bundle's INT8 graph is of the cpu scheme and its manifest lists openvino as scored
    assert opened == ["onnx-int8", "onnx-int8"]
    named = run_raw(example, bundle, "int8", phantom_hu, tmp_path)
    assert (labels[0] > 0).any() and np.array_equal(labels[0], labels[1]) and np.array_equal(labels[0], named)
