"""The sweep's reports land as one set: a Ctrl-C between their renames, or a plot that fails,
leaves the earlier reports whole, never this run's table beside an earlier run's plot."""

import json
import resource
import signal
import subprocess
import sys

import pytest

from tests.interrupting import assert_whole_set, interrupted_between_renames, snapshot

MACHINE = "Xeon | 2 cpus | avx2"
CHOOSE = {"reference": "ref", "max_dice_loss": 0.005}
NAMES = ["sweep.csv", "variants.csv", "results.json", "commands.sh", "choice.json", "pareto.png"]


def point(i, ms, dice):
    return {"id": i, "model": "unet", "base": 4, "depth": 2, "size": 64, "params": 1, "gflop": 1.0,
            "latency_ms_p50": ms, "model_ms_p50": ms, "dice_int8": dice, "dice_fp32": dice,
            "volume_slices_per_s": 1000 / ms, "slice_size": 512, "commands": ["edgeseg train"], "machine": MACHINE}


WRITE_REPORTS = """
import json, sys
from edgeseg.sweep.report import write_reports

out, points, choose = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
try:
    write_reports(out, points, choose)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_between_the_renames_of_the_sweep_reports_leaves_one_whole_set(tmp_path):
    pytest.importorskip("matplotlib")
    from edgeseg.sweep.report import write_reports

    write_reports(tmp_path, [point("ref", 40.0, 0.93), point("small", 20.0, 0.93)], CHOOSE)
    outputs = [tmp_path / name for name in NAMES]
    before = snapshot(outputs)
    later = [point("ref", 40.0, 0.93), point("small", 30.0, 0.93), point("tiny", 10.0, 0.90)]
    proc = interrupted_between_renames(outputs, tmp_path, json.dumps(later), json.dumps(CHOOSE), code=WRITE_REPORTS)
    assert proc.returncode == 0 and proc.stdout == "interrupted\n", proc.stderr
    assert_whole_set(outputs, before)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)


def test_a_full_disk_on_the_plot_leaves_the_earlier_reports(tmp_path):
    """The plot is drawn last; the tables written before it used to land on their own. The disk
    is full for real: files are limited (RLIMIT_FSIZE) to more than the tables, less than the plot."""
    pytest.importorskip("matplotlib")
    from edgeseg.sweep.report import write_reports

    write_reports(tmp_path, [point("ref", 40.0, 0.93), point("small", 20.0, 0.93)], CHOOSE)
    outputs = [tmp_path / name for name in NAMES]
    before = snapshot(outputs)
    limit = max(p.stat().st_size for p in outputs if p.suffix != ".png") + 1024
    assert limit < (tmp_path / "pareto.png").stat().st_size

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    later = [point("ref", 40.0, 0.93), point("small", 30.0, 0.93)]
    proc = subprocess.run([sys.executable, "-c", WRITE_REPORTS, str(tmp_path), json.dumps(later), json.dumps(CHOOSE)],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_files)
    assert proc.returncode == 1 and "File too large" in proc.stderr, proc.stderr
    assert snapshot(outputs) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(NAMES)
