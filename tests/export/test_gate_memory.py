"""The parity gate at large spec sizes: it holds every held-out slice's logits at once, so it
takes as many slices as fit its memory limit (and says so), refuses a spec of which not one
fits, and shows its progress slice by slice on stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from edgeseg.export.gate_memory import gate_slice_limit
from edgeseg.spec import PreprocessSpec


def _export(checkpoint, out, budget: int | str | None, *flags):
    env = dict(os.environ, EDGESEG_PROGRESS_INTERVAL="0")  # stderr is a pipe: a progress line per update
    env.pop("EDGESEG_GATE_MAX_BYTES", None)
    if budget is not None:
        env["EDGESEG_GATE_MAX_BYTES"] = str(budget)
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", str(checkpoint), "--out", str(out),
                           "--formats", "onnx", *flags], capture_output=True, text=True, timeout=300, env=env)


# One slice in the gate: per logit float32 reference + float32 artifact + float64 copy, |d| and
# percentile copy + float32 sorted reference (36 bytes), per pixel the float32 input and uint8 label.
def _slice_bytes(side: int, classes: int) -> int:
    return side * side * (classes * (4 + 4 + 8 + 8 + 8 + 4) + 4 + 1)


def test_a_4096_spec_gets_the_slices_that_fit_the_default_limit_not_64():
    spec = PreprocessSpec(window=(-100.0, 400.0), size=(4096, 4096))
    assert gate_slice_limit(spec, 2, 64) == (8 << 30) // _slice_bytes(4096, 2) == 6
    for side in (256, 512, 1024):  # the usual sizes keep every slice
        assert gate_slice_limit(PreprocessSpec(size=(side, side)), 2, 64) == 64


def test_the_gate_takes_the_slices_that_fit_says_so_and_shows_its_progress(checkpoint, tmp_path):
    out = tmp_path / "b"
    proc = _export(checkpoint, out, 4 * _slice_bytes(64, 2) + 100)
    assert proc.returncode == 0, proc.stderr
    assert "parity gate: 4 held-out slices, not 64: at 64x64 one slice takes" in proc.stdout
    report = json.loads((out / "parity.json").read_text())
    assert report["slices"] == 4 and report["slice_limit"]["asked"] == 64
    # progress per pass over the held-out slices, counting the 4 slices, on stderr
    for what in ("gate: fp32 reference", "gate: onnx-fp32 on onnxruntime"):
        counts = re.findall(rf"^{re.escape(what)}: (\d+)/4 slices \(\d+%\)", proc.stderr, re.M)
        assert counts and counts[-1] == "4", proc.stderr[-2000:]


def test_quiet_hides_the_gate_progress(checkpoint, tmp_path):
    proc = _export(checkpoint, tmp_path / "b", None, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "gate:" not in proc.stderr


@pytest.mark.parametrize(("budget", "message"), [
    (1000, f"one held-out slice at the spec size 64x64 with 2 classes takes {_slice_bytes(64, 2)} bytes in the parity "
           "gate, above its limit of 1000 bytes (EDGESEG_GATE_MAX_BYTES raises it)"),
    ("lots", "environment variable EDGESEG_GATE_MAX_BYTES must be a positive integer, got 'lots'"),
])
def test_a_spec_of_which_not_one_slice_fits_is_refused_before_any_work(checkpoint, tmp_path, budget, message,
                                                                        assert_one_line_error):
    assert_one_line_error(_export(checkpoint, tmp_path / "b", budget), message)
    assert list(tmp_path.iterdir()) == []
