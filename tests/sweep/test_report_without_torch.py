"""A sweep run that trains, exports and scores nothing (``--status``, the reports over finished
points, a ``--regate`` with nothing to export again, ``--remeasure``) needs no torch: it runs in
a process where torch cannot be imported, as on a deployment machine without the train extra,
and a run that would train or score says it needs torch before it writes anything."""

import json
from pathlib import Path

import pytest

TINY_SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()
MOBILE = "mobile_unet-b4-d2-s64"  # the point copy_mobile_point_sweep has finished


def _sweep(python_without, tmp_path, out, *args):
    """``edgeseg sweep`` of the tiny sweep into ``out``, in a process without torch."""
    (tmp_path / "sweep.toml").write_text(TINY_SWEEP)
    return python_without(["-m", "edgeseg.cli", "sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--quiet",
                           *args], tmp_path)


def test_status_reads_a_sweep_without_torch(tmp_path, python_without, copy_mobile_point_sweep):
    out = copy_mobile_point_sweep(tmp_path / "out")
    result = json.loads((out / "points" / MOBILE / "result.json").read_text())
    proc = _sweep(python_without, tmp_path, out, "--status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["unet-b4-d2-s64", "not", "started"]
    assert lines[1].split()[:2] == [MOBILE, "finished"] and f"Dice fp32 {result['dice_fp32']:.4f}" in lines[1]


@pytest.mark.parametrize("mode", [["--point", MOBILE], ["--regate"], ["--remeasure", "1"]])
def test_reports_over_finished_points_are_written_without_torch(tmp_path, python_without, copy_mobile_point_sweep,
                                                                 mode):
    out = copy_mobile_point_sweep(tmp_path / "out")
    proc = _sweep(python_without, tmp_path, out, *mode)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads((out / "results.json").read_text())] == [MOBILE]
    assert [row.split(",")[0] for row in (out / "sweep.csv").read_text().splitlines()[1:]] == [MOBILE]
    if mode == ["--regate"]:
        assert "every finished point passed today's gate already; nothing exported again" in proc.stdout
    if mode[0] == "--remeasure":  # measured again, in a fresh interpreter that has no torch either
        assert len(json.loads((out / "points" / MOBILE / "result.json").read_text())["latency_rounds_ms_p50"]) == 1


@pytest.mark.parametrize("mode", [[], ["--rescore"]])
def test_a_run_that_trains_or_scores_says_it_needs_torch_and_writes_nothing(tmp_path, python_without,
                                                                            assert_one_line_error,
                                                                            copy_mobile_point_sweep, mode):
    out = copy_mobile_point_sweep(tmp_path / "out")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = _sweep(python_without, tmp_path, out, *mode)
    assert_one_line_error(proc, "edgeseg sweep needs the 'torch' package: pip install 'edgeseg[train]'")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
