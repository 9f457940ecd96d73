"""``edgeseg bench``: the table, JSON and PNG a user reads, from one run over two backends."""

from __future__ import annotations

import json

import pytest

from edgeseg.bench.runtime import PERCENTILES, STAGES
from edgeseg.cli.main import cli
from tests.bundle_edits import filter_liver_by_ml
from tests.guarded_cli import GuardedCliRunner


def bench_json(bundle, tmp_path, *, batches: str, runs: int, warmup: int):
    """(CliRunner result, the one JSON record) of a one-thread ONNX Runtime FP32 bench at 64
    pixels without the cold start; the run must succeed."""
    out_json = tmp_path / "bench.json"
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle), "--backend", "onnxruntime:fp32", "--batch", batches,
                                             "--size", "64", "--runs", str(runs), "--warmup", str(warmup), "--threads", "1",
                                             "--no-cold-start", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    [record] = json.loads(out_json.read_text())
    return result, record


def test_bench_reports_every_stage_throughput_and_cold_start(bundle_dir, tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "latency.png"
    result = GuardedCliRunner().invoke(cli, [
               "bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--backend", "onnxruntime:int8",
               "--batch", "1,2", "--size", "96", "--runs", "3", "--warmup", "1", "--threads", "1",
               "--json", str(out_json), "--png", str(out_png)])
    assert result.exit_code == 0, result.output
    results = json.loads(out_json.read_text())
    assert [r["backend"] for r in results] == ["onnxruntime:fp32", "onnxruntime:int8"]
    for r in results:
        assert r["chosen"] == r["backend"] and r["size"] == 96
        assert (r["runs"], r["warmup"], r["threads"]) == (3, 1, 1)  # what it was measured with
        for batch in ("1", "2"):
            for stage in STAGES:
                values = [r["batches"][batch][stage][name] for name, _ in PERCENTILES]
                assert values == sorted(values) and values[0] > 0, (batch, stage, values)
            ratio = r["batches"][batch]["end_to_end_over_model"]
            want = r["batches"][batch]["end_to_end"]["p50"] / r["batches"][batch]["inference"]["p50"]
            assert ratio["p50"] > 0 and abs(ratio["of_p50s"] - want) < 2e-3
        volume = r["volume"]
        assert volume["pipelined_slices_per_s"] > 0 and volume["model_only_slices_per_s"] > 0
        assert volume["rounds"] == 3  # the best of 3 rounds
        assert 0 < r["cold_start"]["seconds"] < 60 and r["cold_start"]["peak_rss_mb"] > 10
    assert "onnxruntime:int8" in result.output and "end_to_end" in result.output
    from edgeseg.runtime.machine import machine_signature

    assert {r["machine"] for r in results} == {machine_signature()}  # comparable with figures of this CPU only
    assert f"measured on: {machine_signature()}" in result.output
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_options(bundle_dir):
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--batch", "one"])
    assert result.exit_code == 2 and "edgeseg: error: --batch must be comma-separated integers" in result.output


def test_bench_input_is_ct_with_an_organ_in_every_slice():
    """The timed slices are abdominal CT in int16 HU with soft tissue (the liver region) and air,
    not organ-free noise, so post-processing is timed on the work a real slice gives it."""
    import numpy as np

    from edgeseg.bench.runtime import ct_slices
    from edgeseg.data.phantom import PHANTOM_LABELS, synth_phantom

    hu = ct_slices(12, 96)
    assert hu.shape == (12, 96, 96) and hu.dtype == np.int16
    assert len({s.tobytes() for s in hu}) == 12  # distinct slices
    volume = synth_phantom("bench", 0, shape=(18, 96, 96))
    liver = volume.label == PHANTOM_LABELS["liver"]
    by_bytes = {np.rint(volume.hu[z]).astype(np.int16).tobytes(): z for z in range(18)}
    for s in hu:
        z = by_bytes[s.tobytes()]
        assert liver[z].mean() > 0.01, f"slice {z} has no liver"
        assert (s < -900).mean() > 0.05 and np.median(s[liver[z]]) > 0  # air outside, tissue inside


def test_stages_are_timed_in_turns_so_their_ratio_cancels_drift():
    from edgeseg.bench.runtime import time_interleaved

    calls = []
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in samples.values() for t in v)


def test_stages_timed_for_a_duration_run_at_least_that_long_in_turns():
    import time

    from edgeseg.bench.runtime import time_interleaved

    calls = []
    start = time.perf_counter()
    samples = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=10**9,
                               warmup=1, seconds=0.05)
    assert time.perf_counter() - start >= 0.05  # it returns only once the time has passed
    rounds = len(samples["a"])
    assert rounds >= 1 and len(samples["b"]) == rounds and calls == ["a", "b"] * (rounds + 1)
    # runs stays the most: a stage of microseconds cannot fill memory with timings
    capped = time_interleaved({"a": lambda: None}, runs=3, warmup=0, seconds=3600)
    assert len(capped["a"]) == 3


def test_bench_duration_replaces_the_call_count_and_is_recorded(bundle_dir, tmp_path):
    out_json = tmp_path / "bench.json"
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--batch", "1,2",
                                             "--size", "32", "--duration", "0.2", "--warmup", "0", "--threads", "1",
                                             "--no-cold-start", "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    [r] = json.loads(out_json.read_text())
    assert (r["duration"], r["runs"]) == (0.2, None)
    for batch in ("1", "2"):
        stages = r["batches"][batch]
        assert stages["runs"] >= 1
        assert {len(stages["samples_ms"][stage]) for stage in STAGES} == {stages["runs"]}


@pytest.mark.parametrize(("options", "words"), [
    (["--duration", "1", "--runs", "30"], "--runs and --duration do not go together: give one"),
    (["--duration", "0"], "--duration must be seconds above 0 and at most 3600, got 0"),
    (["--duration", "nan"], "--duration must be seconds above 0 and at most 3600, got nan"),
    (["--duration", "86400"], "--duration must be seconds above 0 and at most 3600, got 86400"),
])
def test_bench_refuses_a_bad_duration_before_measuring(bundle_dir, tmp_path, options, words, assert_one_line_error):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench", str(bundle_dir), "--backend",
                           "onnxruntime:fp32", "--size", "16", *options, "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, words)
    assert done.stdout == "" and not (tmp_path / "b.json").exists()


def test_bench_with_mirroring_says_so_and_mirrors_the_end_to_end_stage(bundle_dir, tmp_path, monkeypatch):
    """--tta flip: the JSON and the table name the mode; the end-to-end stage and the cold start
    run the flipped passes while the inference stage stays one pass (counted, not timed)."""
    from edgeseg.runtime.segmenter import Segmenter

    modes = []
    original = Segmenter._network
    monkeypatch.setattr(Segmenter, "_network", lambda self, batch: modes.append(self.tta) or original(self, batch))
    out_json = tmp_path / "bench.json"
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--batch", "1",
                                             "--size", "96", "--runs", "2", "--warmup", "0", "--threads", "1", "--tta", "flip",
                                             "--json", str(out_json)])
    assert result.exit_code == 0, result.output
    [r] = json.loads(out_json.read_text())
    assert r["tta"] == "flip" and "onnxruntime:fp32 tta flip" in result.output
    assert modes and set(modes) == {"flip"}
    assert 0 < r["cold_start"]["seconds"] < 60


def test_bench_refuses_outputs_in_the_bundle_or_on_one_file_before_measuring(bundle_copy, tmp_path):
    manifest = (bundle_copy / "manifest.json").read_bytes()
    cases = [(["--json", str(bundle_copy / "manifest.json")], "is inside the bundle"),
             (["--png", str(bundle_copy / "model.onnx")], "is inside the bundle"),
             (["--json", str(bundle_copy / "new.json")], "is inside the bundle"),
             (["--png", str(tmp_path / "x"), "--json", str(tmp_path / "." / "x")], "is the file --json writes too")]
    for args, message in cases:
        result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_copy), "--backend", "onnxruntime:fp32", "--size", "16",
                                                 "--runs", "1", "--warmup", "0", "--no-cold-start", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("edgeseg: error: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1  # no table: nothing was measured
    assert (bundle_copy / "manifest.json").read_bytes() == manifest
    assert not (bundle_copy / "new.json").exists() and not (tmp_path / "x").exists()


def test_bench_fails_when_every_measurement_failed(bundle_dir, tmp_path, monkeypatch):
    """Backends the bundle offers that fail on this machine (played by a bench_backend that
    raises): the table names each, and the run ends with one error line and no JSON."""
    from edgeseg.bench import runtime
    from edgeseg.errors import BackendError

    def fails(bundle, label, **kwargs):
        raise BackendError(f"{label} does not load here")

    monkeypatch.setattr(runtime, "bench_backend", fails)
    out_json = tmp_path / "bench.json"
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--backend",
                                             "onnxruntime:int8", "--size", "16", "--runs", "1", "--warmup", "0",
                                             "--json", str(out_json)])
    assert result.exit_code == 2, result.output
    table, error = result.output.replace("\r", "").strip().rsplit("\n", 1)
    assert "onnxruntime:fp32 does not load here" in table and "onnxruntime:int8 does not load here" in table
    assert error.startswith("edgeseg: error: every measurement failed (first: onnxruntime:fp32: ")
    assert not out_json.exists()


def _bench(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_an_unknown_backend_is_refused_before_anything_is_measured(bundle_dir, assert_one_line_error):
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners import runners
    from edgeseg.runtime.selection import candidates

    done = _bench(bundle_dir, "--backend", "bogus", "--backend", "onnxruntime:fp32", "--size", "64", "--runs", "1",
                  "--warmup", "0", "--batch", "1", "--no-cold-start")
    assert_one_line_error(done, "unknown backend 'bogus'; known: auto, ")
    assert done.stdout == ""  # no table with the error buried in it
    for name, cls in runners().items():  # every backend that loads an artifact is listed
        if cls.format is not None:
            assert name in done.stderr
    absent = _bench(bundle_dir, "--backend", "onnxruntime:fp16", "--size", "64")
    offered = sorted({f"{c.runner}:{c.entry.precision}" for c in candidates(read_manifest(bundle_dir), installed_only=False)})
    assert_one_line_error(absent, f"backend 'onnxruntime:fp16' has no artifact in this bundle; it offers {', '.join(offered)}")
    assert absent.stdout == ""


def test_without_cold_start_its_columns_say_not_measured(bundle_dir, tmp_path):
    result, r = bench_json(bundle_dir, tmp_path, batches="1", runs=1, warmup=0)
    assert "cold_start" not in r
    [row] = [line for line in result.output.splitlines() if line.startswith("onnxruntime:fp32") and "e2e" not in line
             and len(line.split()) == 6]
    assert row.split()[-2:] == ["-", "-"] and "nan" not in result.output.lower()


def test_the_volume_throughput_takes_no_more_rounds_than_runs(bundle_dir, tmp_path):
    """--runs 1 measured the 32-slice volume in 3 rounds and a warm-up one: a quick check of a
    slow backend (a reference evaluator, seconds a slice) took minutes."""
    for runs in (1, 2):
        _, r = bench_json(bundle_dir, tmp_path, batches="1", runs=runs, warmup=0)
        assert r["volume"]["rounds"] == runs and r["volume"]["slices"] == 32


def test_an_oversized_size_is_refused_before_any_table(bundle_dir, assert_one_line_error):
    from edgeseg.limits import DEFAULT_MAX_PIXELS

    size = 5000
    assert size * size > DEFAULT_MAX_PIXELS
    done = _bench(bundle_dir, "--backend", "onnxruntime:fp32", "--size", size, "--batch", "1")
    assert_one_line_error(done, f"--size {size}: a slice of {size}x{size} = {size * size} pixels is over the limit of "
                                f"{DEFAULT_MAX_PIXELS}")
    assert done.stdout == ""  # not even the table's header


@pytest.mark.parametrize("args", [["--runs", "100001"], ["--warmup", "99999999999999999999"], ["--runs", "0"]])
def test_bench_call_counts_out_of_range_are_refused_before_measuring(bundle_dir, args):
    """--runs 99999999999999999999 was taken: the run would have gone on for ever."""
    result = GuardedCliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--size", "16",
                                             "--no-cold-start", *args])
    assert result.exit_code == 2 and result.output.startswith("edgeseg: error: need batch sizes >= 1"), result.output
    assert "--runs 1..100000, --warmup 0..100000" in result.output and len(result.output.strip().splitlines()) == 1


def test_bench_measures_a_bundle_that_removes_components_by_ml(bundle_copy, tmp_path):
    """Such a bundle needs a voxel size for a volume; bench's stacks come from a phantom of known
    voxel size and pass it, so every stage is measured rather than failing on every backend."""
    _, r = bench_json(filter_liver_by_ml(bundle_copy, 0.01), tmp_path, batches="1,2", runs=2, warmup=0)
    assert "error" not in r, r.get("error")
    assert set(r["batches"]) == {"1", "2"} and r["volume"]["pipelined_slices_per_s"] > 0
