"""``edgeseg bench``: the table, JSON and PNG a user reads, from one run over two backends."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgeseg.bench.runtime import PERCENTILES, STAGES
from edgeseg.cli.main import cli


def test_bench_reports_every_stage_throughput_and_cold_start(bundle_dir, tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "latency.png"
    result = CliRunner().invoke(cli, [
        "bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--backend", "onnxruntime:int8",
        "--batch", "1,2", "--size", "96", "--runs", "3", "--warmup", "1", "--threads", "1",
        "--json", str(out_json), "--png", str(out_png)])
    assert result.exit_code == 0, result.output
    results = json.loads(out_json.read_text())
    assert [r["backend"] for r in results] == ["onnxruntime:fp32", "onnxruntime:int8"]
    for r in results:
        assert r["chosen"] == r["backend"] and r["size"] == 96
        for batch in ("1", "2"):
            for stage in STAGES:
                values = [r["batches"][batch][stage][name] for name, _ in PERCENTILES]
                assert values == sorted(values) and values[0] > 0, (batch, stage, values)
            ratio = r["batches"][batch]["end_to_end_over_model"]
            want = r["batches"][batch]["end_to_end"]["p50"] / r["batches"][batch]["inference"]["p50"]
            assert ratio["p50"] > 0 and abs(ratio["of_p50s"] - want) < 2e-3
        volume = r["volume"]
        assert volume["pipelined_slices_per_s"] > 0 and volume["model_only_slices_per_s"] > 0
        assert 0 < r["cold_start"]["seconds"] < 60 and r["cold_start"]["peak_rss_mb"] > 10
    assert "onnxruntime:int8" in result.output and "end_to_end" in result.output
    from edgeseg.runtime.selection import machine_signature

    assert {r["machine"] for r in results} == {machine_signature()}  # comparable with figures of this CPU only
    assert f"measured on: {machine_signature()}" in result.output
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_options(bundle_dir):
    result = CliRunner().invoke(cli, ["bench", str(bundle_dir), "--batch", "one"])
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


def test_bench_with_mirroring_says_so_and_mirrors_the_end_to_end_stage(bundle_dir, tmp_path, monkeypatch):
    """--tta flip: the JSON and the table name the mode; the end-to-end stage and the cold start
    run the flipped passes while the inference stage stays one pass (counted, not timed)."""
    from edgeseg.runtime.segmenter import Segmenter

    modes = []
    original = Segmenter._network
    monkeypatch.setattr(Segmenter, "_network", lambda self, batch: modes.append(self.tta) or original(self, batch))
    out_json = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "onnxruntime:fp32", "--batch", "1",
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
        result = CliRunner().invoke(cli, ["bench", str(bundle_copy), "--backend", "onnxruntime:fp32", "--size", "16",
                                          "--runs", "1", "--warmup", "0", "--no-cold-start", *args])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("edgeseg: error: ") and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1  # no table: nothing was measured
    assert (bundle_copy / "manifest.json").read_bytes() == manifest
    assert not (bundle_copy / "new.json").exists() and not (tmp_path / "x").exists()


def test_bench_fails_when_every_measurement_failed(bundle_dir, tmp_path):
    out_json = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", str(bundle_dir), "--backend", "bogus", "--backend", "nonesuch",
                                      "--size", "16", "--runs", "1", "--warmup", "0", "--json", str(out_json)])
    assert result.exit_code == 2, result.output
    table, error = result.output.replace("\r", "").strip().rsplit("\n", 1)
    assert "bogus" in table and "nonesuch" in table
    assert error.startswith("edgeseg: error: every measurement failed (first: bogus: ")
    assert not out_json.exists()
