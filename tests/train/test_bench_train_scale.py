"""benchmarks/bench_train_scale.py: the scale table's modes do the same work, so their ratios mean
what docs/results.md says (same batches, same model and threads, workers counted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_train_scale.py"


def test_every_mode_trains_on_the_same_batches_with_the_same_threads(tmp_path):
    report = tmp_path / "report.json"
    work = tmp_path / "work"
    cmd = [sys.executable, str(SCRIPT), "--counts", "3", "--unique", "2", "--side", "48", "--slices", "6",
           "--size", "32", "--depth", "2", "--steps", "5", "--warmup", "1", "--workers", "0,1", "--repeats", "3",
           "--work", str(work), "--json", str(report)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(report.read_text())
    # Three cases, the third a link to the first (generated once), each its own case in the store.
    cases = work / "cases-3-48-6" / "imagesTr"
    assert os.path.samefile(cases / "case_002.nii.gz", cases / "case_000.nii.gz")
    assert row["build_slices"] == 18
    # 18 slices of 32 x 32: float32 images and uint8 labels, 5 bytes a pixel, plus .npy headers,
    # the index and the manifest (a few KiB).
    data_bytes = 18 * 32 * 32 * 5
    assert data_bytes < row["build_store_bytes"] < data_bytes + 32 * 1024
    modes = [row["memory"], row["workers_0"], row["workers_1"]]
    # The in-memory baseline trains on exactly the streamed batches, from the same weights.
    assert len({m["batches_digest"] for m in modes}) == 1
    assert len({m["last_loss"] for m in modes}) == 1
    assert [m["threads"] for m in modes] == [1, 1, 1]
    assert row["workers_0"]["workers_peak_rss_mb"] == []
    (worker_mb,) = row["workers_1"]["workers_peak_rss_mb"]
    assert worker_mb > 20, "a worker is a Python process with numpy and torch loaded"
    assert row["loader"]["read_augment_s_per_batch"] > 0
    # The wait for each batch is timed: an in-memory list never makes a step wait (microseconds;
    # the bound leaves room for the process being descheduled in a 5-step average on a busy machine).
    assert all(m["data_wait_s_per_step"] >= 0 for m in modes)
    assert row["memory"]["data_wait_s_per_step"] < 0.05
    # Three interleaved rounds: each mode keeps its median round, and each streamed mode's ratio
    # is the median of its steps/s over the in-memory run of the same round.
    for name in ("memory", "workers_0", "workers_1"):
        rounds = row[name]["steps_per_s_rounds"]
        assert len(rounds) == 3 and row[name]["steps_per_s"] == sorted(rounds)[1]
    for name in ("workers_0", "workers_1"):
        paired = [w / m for w, m in zip(row[name]["steps_per_s_rounds"], row["memory"]["steps_per_s_rounds"])]
        assert row[name]["ratio_to_memory_rounds"] == [round(x, 4) for x in paired]
        assert row[name]["ratio_to_memory"] == round(sorted(paired)[1], 4)


def test_a_child_reports_its_own_peak_not_its_parents(tmp_path):
    """Linux hands a parent's RSS high-water mark to a child that Python's subprocess starts (the
    child's ``ru_maxrss`` after exec includes it), so the benchmark reads each process's own
    ``VmHWM``: a child of a parent that held 400 MiB reports its own few tens of MiB."""
    if not Path("/proc/self/status").is_file():
        import pytest

        pytest.skip("no /proc/self/status here: the benchmark falls back to ru_maxrss")
    parent = f"""
import json, resource, subprocess, sys
import numpy as np
big = np.ones(400 * 2**20 // 8)
big[:] = 2.0
del big
child = ("import json, resource, sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); import bench_train_scale as b; "
         "print(json.dumps({{**b._peak_rss_mb(), 'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))")
done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
print(json.dumps({{"parent_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **json.loads(done.stdout)}}))
"""
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["parent_mb"] > 400
    if got["ru_maxrss_mb"] < 400:
        import pytest

        pytest.skip(f"here a child's ru_maxrss ({got['ru_maxrss_mb']:.0f} MB) does not carry the parent's peak")
    assert got["peak_rss_mb"] < 100, got  # the child's own peak: an interpreter and json
