"""--quiet through the real command: no progress and no info lines, every warning still shown as
one `edgeseg: warning:` line once the command has succeeded, and a failed command's error line
alone (docs/index.md, "What a command writes to the terminal or a log")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli.test_interrupted_writes import edgeseg_limited

OTHER_DATA = "phantom:cases=2,size=64,slices=8,seed=3"  # not the data the test checkpoint was trained on


def edgeseg(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def test_quiet_predict_still_warns_that_viewers_will_stack_a_tilted_series_squarely(exported_bundle, tmp_path):
    """The warning that ITK-based viewers will misplace a gantry-tilted series' NIfTI is what
    the user must know before reading the output; predict --quiet dropped it with its log lines."""
    pytest.importorskip("nibabel")
    from tests.readers.test_gantry_tilt import write_tilted_series

    write_tilted_series(tmp_path / "ct", 20.0)
    out = tmp_path / "mask.nii.gz"
    done = edgeseg("predict", exported_bundle, tmp_path / "ct", "--out", out, "--backend", "onnxruntime:fp32", "--quiet")
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"edgeseg: warning: NIfTI output {out}: the grid of ") and "sheared" in line, line
    assert out.is_file() and done.stdout.strip()


def test_quiet_evaluate_prints_its_warning_and_no_info_line(trained_checkpoint, tmp_path):
    """evaluate --quiet printed its info line (`evaluated 2 cases (all split)`) and its warning as
    a bare line; the table on stdout is the same as without --quiet."""
    args = ("evaluate", trained_checkpoint, "--data", OTHER_DATA)
    loud, quiet = edgeseg(*args, "--out", tmp_path / "loud"), edgeseg(*args, "--out", tmp_path / "quiet", "--quiet")
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    warning = (f"edgeseg: warning: {OTHER_DATA} is not the data the checkpoint was trained on "
               f"(phantom:cases=6,size=64,slices=16): evaluating every case")
    assert quiet.stderr.splitlines() == [warning]
    # without --quiet the same warning, in place among the info lines
    assert warning in loud.stderr.splitlines() and "evaluated 2 cases (all split)" in loud.stderr.splitlines()
    assert quiet.stdout.replace(str(tmp_path / "quiet"), "OUT") == loud.stdout.replace(str(tmp_path / "loud"), "OUT")


def test_quiet_bench_prints_the_probe_cache_warning_as_one_warning_line(exported_bundle, tmp_path):
    """bench set up no logging: its warning reached stderr bare, through Python's last-resort
    handler."""
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder should be\n")
    done = edgeseg("bench", exported_bundle, "--backend", "auto", "--batch", 1, "--size", 64, "--runs", 2,
                   "--warmup", 1, "--no-cold-start", "--quiet", env={"EDGESEG_CACHE_DIR": str(cache)})
    assert done.returncode == 0, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"edgeseg: warning: cannot use the backend probe cache in {cache} "), line


def test_a_quiet_command_that_warned_and_then_failed_prints_its_error_line_alone(trained_checkpoint, tmp_path,
                                                                                 assert_one_line_error):
    """evaluate --quiet of other data on a full disk printed the warning and the info line before
    its error."""
    out = tmp_path / "eval"
    proc = edgeseg_limited(0, "evaluate", trained_checkpoint, "--data", OTHER_DATA, "--out", out, "--quiet")
    assert_one_line_error(proc, "File too large")
    assert not out.exists()
