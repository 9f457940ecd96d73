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
    # FOV check off: the tilted series' field of view is not the test bundle's (192 mm phantoms), a second warning
    done = edgeseg("predict", exported_bundle, tmp_path / "ct", "--out", out, "--backend", "onnxruntime:fp32", "--quiet",
                   env={"EDGESEG_FOV_CHECK": "off"})
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


def _tiff_claiming_samples_per_pixel(count: int) -> bytes:
    """An RGB TIFF whose SamplesPerPixel field is ``count``: Pillow logs that at ERROR, then refuses the file."""
    import io
    import struct

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(out, "TIFF")
    data = bytearray(out.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if struct.unpack("<H", data[entry:entry + 2])[0] == 277:  # SamplesPerPixel, one SHORT
            data[entry + 8:entry + 10] = struct.pack("<H", count)
    return bytes(data)


@pytest.mark.parametrize("quiet", [(), ("--quiet",)])
def test_a_library_log_line_about_a_corrupt_file_does_not_precede_the_error(tmp_path, assert_one_line_error, quiet):
    """Pillow logs a TIFF's impossible SamplesPerPixel through a logger without a handler, so
    Python printed it as a bare line before edgeseg's error, with or without --quiet."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a_1.tif").write_bytes(_tiff_claiming_samples_per_pixel(73))
    assert_one_line_error(edgeseg("data", "info", tmp_path, *quiet), "a_1.tif")
