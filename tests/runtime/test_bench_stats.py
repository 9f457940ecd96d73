"""``edgeseg bench``'s statistics against hand-computed answers, and what its JSON records so
two results can be compared (every timed call, the software it ran with)."""

from __future__ import annotations

import json
import math
import os
from importlib import metadata

import numpy as np
import pytest

from edgeseg.bench.runtime import STAGES, latency_stats
from tests.runtime.test_bench_cli import bench_json


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks, written out by hand."""
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def test_latency_stats_known_answers():
    """1..101 ms in shuffled order: the median is 51, p90 91, p99 100, the mean 51."""
    samples = list(np.random.default_rng(0).permutation(np.arange(1, 102)) / 1e3)
    assert latency_stats(samples) == {"min": 1.0, "p50": 51.0, "p90": 91.0, "p99": 100.0, "max": 101.0, "mean": 51.0}


@pytest.mark.parametrize("count", [1, 2, 7, 30, 1000])
def test_latency_stats_match_a_hand_written_percentile(count):
    rng = np.random.default_rng(count)
    samples = list(rng.lognormal(-6, 0.8, count))  # seconds, skewed as latencies are
    ms = [s * 1e3 for s in samples]
    stats = latency_stats(samples)
    for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
        assert stats[name] == pytest.approx(_percentile(ms, q), abs=6e-4), name
    assert stats["mean"] == pytest.approx(sum(ms) / count, abs=6e-4)


def test_bench_json_holds_every_timed_call_and_the_software_it_ran_with(bundle_dir, tmp_path):
    result, r = bench_json(bundle_dir, tmp_path, batches="1,2", runs=7, warmup=1)
    for batch in ("1", "2"):
        stages = r["batches"][batch]
        assert set(stages["samples_ms"]) == set(STAGES)
        for stage in STAGES:
            raw = stages["samples_ms"][stage]
            assert len(raw) == 7 and min(raw) > 0  # the timed calls, warm-up excluded
            for name, q in (("min", 0), ("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
                assert stages[stage][name] == pytest.approx(_percentile(raw, q), abs=2e-3), (batch, stage, name)
            assert stages[stage]["mean"] == pytest.approx(sum(raw) / 7, abs=2e-3)
    versions = r["versions"]
    assert versions["onnxruntime"] == metadata.version("onnxruntime")
    assert versions["numpy"] == np.__version__ and versions["edgeseg"] and versions["python"]
    assert r["measured_at"].endswith("Z")
    [line] = [line for line in result.output.splitlines() if line.startswith("with: ")]
    assert f"onnxruntime {metadata.version('onnxruntime')}" in line and f"numpy {np.__version__}" in line
    assert " mean  (ms per call)" in result.output


def test_bench_refuses_a_thread_count_no_machine_has_before_measuring(bundle_dir, tmp_path, assert_one_line_error):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench", str(bundle_dir), "--backend",
                           "onnxruntime:fp32", "--size", "16", "--runs", "1", "--threads", "100000",
                           "--json", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "--threads must be >= 0 (0: the backends' default) and at most 1024, got 100000")
    assert done.stdout == "" and not (tmp_path / "b.json").exists()


_ORT_POOL = """
import os, sys
import onnxruntime as ort
before = len(os.listdir("/proc/self/task"))
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(len(os.listdir("/proc/self/task")) - before + 1)  # the calling thread is the pool's first
"""


def _ort_default_pool(model) -> int:
    """The threads of ONNX Runtime's default intra-op pool, counted in a fresh process: the
    worker threads a session starts, plus the thread that calls run."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ORT_POOL, str(model)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def _openvino_default_threads(model) -> int:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    return int(compiled.get_property("INFERENCE_NUM_THREADS"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_bench_json_records_the_threads_the_backend_used_beside_those_asked_for(bundle_dir, tmp_path):
    """--threads 0 was recorded as 0, which says only that the backend chose: the JSON keeps the
    request and adds the count the backend computed with."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    def bench(threads: int) -> dict[str, dict]:
        out = tmp_path / f"bench{threads}.json"
        result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--backend",
                                                 "openvino:fp32", "--batch", "1", "--size", "32", "--runs", "1", "--warmup",
                                                 "0", "--threads", str(threads), "--no-cold-start", "--json", str(out)])
        assert result.exit_code == 0, result.output
        return {r["backend"]: r for r in json.loads(out.read_text())}

    default = bench(0)
    assert {name: r["threads"] for name, r in default.items()} == {"onnxruntime:fp32": 0, "openvino:fp32": 0}
    assert default["onnxruntime:fp32"]["threads_used"] == _ort_default_pool(bundle_dir / "model.onnx")
    assert default["openvino:fp32"]["threads_used"] == _openvino_default_threads(bundle_dir / "model.onnx")
    one = bench(1)
    assert {name: (r["threads"], r["threads_used"]) for name, r in one.items()} == {
        "onnxruntime:fp32": (1, 1), "openvino:fp32": (1, 1)}


def _row(backend: str, chosen: str, inference_ms: float) -> dict:
    stage = {"min": 0.01, "p50": 0.02, "p90": 0.03, "p99": 0.05, "max": 0.06, "mean": 0.025}
    model = {"min": inference_ms, "p50": inference_ms, "p90": inference_ms, "p99": 40 * inference_ms,
             "max": 40 * inference_ms, "mean": inference_ms}
    batch = {s: (model if s in ("inference", "end_to_end") else stage) for s in STAGES}
    return {"backend": backend, "chosen": chosen, "size": 64, "machine": "Some CPU | 2 cpus | avx2",
            "batches": {"1": batch}}


def test_latency_plot_is_readable_when_stages_and_backends_differ_by_orders_of_magnitude():
    """A 0.02 ms kernel beside a 50 ms model with a 2 s p99 outlier: on a linear axis every bar
    but the outlier's was flat. The axis is logarithmic and says so, `auto` names what it ran,
    and the machine is on the figure."""
    import matplotlib.pyplot as plt

    from edgeseg.bench.runtime import latency_figure

    figure = latency_figure([_row("auto", "openvino:int8", 1.0), _row("torchscript:fp32", "torchscript:fp32", 50.0),
                             {"backend": "tensorrt:fp16", "error": "no GPU"}])
    [ax] = figure.axes
    assert ax.get_yscale() == "log" and "ms" in ax.get_ylabel() and "log" in ax.get_ylabel()
    [legend] = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["auto (openvino:int8)", "torchscript:fp32"]
    assert "Some CPU | 2 cpus | avx2" in figure._suptitle.get_text()
    low, high = ax.get_ylim()
    assert low <= 0.02 and high >= 2000  # the smallest p50 and the largest p99 both inside the axis
    plt.close(figure)


def test_a_backend_whose_library_is_broken_gets_an_error_row_and_the_others_are_measured(bundle_dir, tmp_path):
    """An installed OpenVINO whose import fails with something other than ImportError (a shared
    library of another version): `edgeseg bench` ended in a traceback and measured nothing."""
    import os
    import subprocess
    import sys

    broken = tmp_path / "site" / "openvino"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("libopenvino.so.2541: version mismatch")\n')
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench", str(bundle_dir), "--backend", "openvino:fp32",
                           "--backend", "onnxruntime:fp32", "--size", "32", "--batch", "1", "--runs", "2", "--warmup", "0",
                           "--no-cold-start", "--json", str(out_json)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    broken_row, measured = json.loads(out_json.read_text())
    assert broken_row["backend"] == "openvino:fp32"
    assert "'openvino' package fails to import (RuntimeError: libopenvino.so.2541: version mismatch)" in broken_row["error"]
    assert measured["backend"] == "onnxruntime:fp32" and measured["batches"]["1"]["inference"]["p50"] > 0
