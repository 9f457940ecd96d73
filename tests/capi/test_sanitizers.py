"""libedgeseg under AddressSanitizer + UBSan, with leak checking over open/segment/close cycles.

The library and the driver are built with ``-fsanitize=address,undefined`` (baseline code only,
as csrc/tests does); any memory error, undefined behaviour or leak makes the driver exit
non-zero. One leak report is suppressed (lsan.supp): the 40-byte observer proxy that TBB,
inside OpenVINO, can leave behind when its worker threads and process exit race (see oneTBB
PR 1410 on observer proxies at shutdown); a test shows the suppression hides no leak of ours.
OpenVINO itself is not instrumented. The driver's sanitizer build carries a dlopen shim
(ES_DLOPEN_SHIM, see capi_driver.h) because TBB loads a helper with a flag the sanitizer
runtime refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def asan_checks(tmp_path_factory, asan_sdk, build_tools) -> Path:
    out = tmp_path_factory.mktemp("asan")
    return build_tools.compile(asan_sdk, HERE / "capi_checks.c", out / "capi_checks",
                               extra=(*build_tools.san_flags.split(), "-DES_DLOPEN_SHIM", "-ldl"))


def run_sanitized(program: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ,
           "ASAN_OPTIONS": "detect_leaks=1:exitcode=23",
           "LSAN_OPTIONS": f"suppressions={HERE / 'lsan.supp'}:print_suppressions=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_open_segment_close_cycles_are_clean(asan_checks, bundle):
    result = run_sanitized(asan_checks, "cycles", bundle, 4)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr
    assert result.stdout.startswith("0\tcycles done")


def test_a_leak_of_ours_is_still_reported(asan_checks, bundle):
    """The suppression file names TBB's frame only: 64 bytes the driver loses after a full
    open/segment/close are reported, so the clean runs above are not clean by suppression."""
    result = run_sanitized(asan_checks, "leak", bundle)
    assert result.returncode == 23, result.stderr[-4000:]
    assert "LeakSanitizer: detected memory leaks" in result.stderr
    assert "64 byte(s) leaked in 1 allocation(s)" in result.stderr


def test_threads_sharing_a_segmenter_are_clean(asan_checks, bundle):
    result = run_sanitized(asan_checks, "threads", bundle, 3)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.startswith("0\t3 threads x 5 calls, 0 masks differ")


@pytest.mark.parametrize("case", ["nan", "too-large", "short-stride", "normalised", "null-hu", "good-volume"])
def test_bad_calls_are_clean(case, asan_checks, bundle):
    result = run_sanitized(asan_checks, "call", bundle, case)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr


@pytest.mark.parametrize("dtype, code, status", [("<i2", 1, "18"), ("<f4", 3, "18"), ("u1", 0, "0")])
def test_the_air_count_is_clean(dtype, code, status, asan_checks, bundle, tmp_path):
    """The HU checks' count of air voxels over every dtype: one pixel at -1 in stored values
    (refused, ES_EDATA 18) and, for uint8, a picture the liver window takes."""
    import numpy as np

    hu = np.linspace(24, 250 if dtype == "u1" else 1300, 64 * 64).reshape(64, 64).astype(dtype)
    if dtype != "u1":
        hu[3, 3] = -1
    hu.tofile(tmp_path / "hu.raw")
    result = run_sanitized(asan_checks, "typed", bundle, code, 64, 64, tmp_path / "hu.raw")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr and result.stdout.split("\t")[0] == status, result.stdout


def test_bad_bundles_are_clean(asan_checks, bundle, tmp_path):
    (tmp_path / "manifest.json").write_text('{"schema": 1, "spec": {"window": [1, 0]}, "labels": {}, '
                                             '"inputs": [], "outputs": [], "artifacts": []}')
    for target in (tmp_path, tmp_path / "missing"):
        result = run_sanitized(asan_checks, "open", target)
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout.startswith("16\t")


@pytest.mark.parametrize("excluded", [False, True], ids=["signed-int8", "every-artifact-excluded"])
def test_auto_precision_skips_are_clean(excluded, asan_checks, bundle, tmp_path):
    """The CPU-flag reading and the skip message of es_open's auto (test_auto_precision.py)."""
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        entry.setdefault("extra", {})["int8_scheme"] = "tensorrt"
        if excluded:
            entry["excluded"] = {"openvino": "x" * 400}  # longer than a reason's share of the message
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_sanitized(asan_checks, "open", copy, "auto")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr
    assert result.stdout.startswith("16\t" if excluded else "0\t")


@pytest.mark.parametrize("case", ["tta-kept", "tta-unknown", "tta-null-mode"])
def test_mirroring_calls_are_clean(case, asan_checks, bundle):
    result = run_sanitized(asan_checks, "call", bundle, case)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr


def test_a_mirrored_volume_is_clean(asan_checks, bundle, phantom_hu, tmp_path):
    """es_set_tta("mirror") over a volume of more slices than a batch, then a slice alone."""
    import numpy as np

    src, volume = tmp_path / "hu.raw", np.concatenate([phantom_hu, phantom_hu])  # 12 slices: a batch of 8, then 4
    volume.astype("<i2").tofile(src)
    result = run_sanitized(asan_checks, "tta", "mirror", bundle, "int8", *volume.shape, src, tmp_path / "out.raw")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr and result.stdout.startswith("0\t")


@pytest.mark.parametrize("case, code", [("odd-names", "16"), ("two-tensors", "16"), ("cut", "17"), ("damaged", "17")])
def test_artifacts_with_external_or_broken_tensors_are_clean(case, code, asan_checks, bundle, tmp_path):
    """es_open's walk through the graph (csrc/runtime/onnx_form.c) on a refused external tensor,
    on a cut file, and on one whose tensor's name claims more bytes than the tensor holds."""
    import hashlib

    from tests.onnx_placements import placements

    data = placements()["odd-names" if case == "odd-names" else "two-tensors"][0]
    if case == "damaged":  # the first tensor's name, now longer than its tensor
        at = data.index(b"\x05first")
        data = data[:at] + b"\x7f" + data[at + 1:]
    elif case == "cut":
        data = data[:len(data) - 9]
    copy = shutil.copytree(bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["format"] == "onnx" and a["precision"] == "fp32")
    (copy / entry["file"]).write_bytes(data)
    entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run_sanitized(asan_checks, "open", copy, "fp32")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Sanitizer" not in result.stderr and result.stdout.startswith(code + "\t"), result.stdout[:600]


def test_reading_parity_reports_is_clean(asan_checks, bundle, tmp_path):
    """auto on a manifest without ``scored`` reads parity.json (tests/capi/test_parity_record.py):
    each report variant, and one that is no JSON, is parsed, checked and freed cleanly."""
    from tests.old_bundles import VARIANTS, old_bundle

    for variant in [*VARIANTS, "not-json"]:
        copy = old_bundle(bundle, tmp_path / variant, "as-exported" if variant == "not-json" else variant)
        if variant == "not-json":
            (copy / "parity.json").write_text('{"results": [{"file": "model.onnx", ')
        result = run_sanitized(asan_checks, "open", copy, "auto")
        assert result.returncode == 0 and "Sanitizer" not in result.stderr, (variant, result.stderr[-4000:])


def test_the_warning_channel_is_clean(asan_sdk, build_tools, bundle, phantom_hu, tmp_path, monkeypatch):
    """warning_checks (tests/capi/test_warnings.py) under the sanitizers: callbacks, es_last_warnings
    and threads sharing a segmenter that warns on every other thread's calls, with and without
    callbacks swapped meanwhile."""
    monkeypatch.delenv("EDGESEG_FOV_CHECK", raising=False)
    program = build_tools.compile(asan_sdk, HERE / "warning_checks.c", tmp_path / "warning_checks",
                                  extra=(*build_tools.san_flags.split(), "-DES_DLOPEN_SHIM", "-ldl", "-pthread"))
    phantom_hu.astype("<i2").tofile(tmp_path / "hu.raw")
    outside = (2.5, 2.88, 2.88)  # 3 x the test bundle's training field of view
    cases = {"callback\t1\t1\tvolume: field of view 576 mm": ["calls", *outside, bundle, "fp32", *phantom_hu.shape,
                                                                 tmp_path / "hu.raw", tmp_path / "labels.raw"],
             "thread\t1\t2\t0": ["threads", 3, 2, *outside, bundle, *phantom_hu.shape[1:], tmp_path / "hu.raw"],
             # the callback's `user` freed after each es_set_warning_callback while threads warn
             "swap\t4\t0\t0": ["swap", 4, 2, *outside, bundle, *phantom_hu.shape[1:], tmp_path / "hu.raw"]}
    for heard, args in cases.items():
        result = run_sanitized(program, *args)
        assert result.returncode == 0, result.stderr[-4000:]
        assert "Sanitizer" not in result.stderr
        assert heard in result.stdout, result.stdout
