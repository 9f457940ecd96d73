"""A short load test through the real `edgeseg serve` process: no request may fail."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgeseg.cli.main import cli


def test_short_load_has_no_errors_and_bounded_memory(serve_bundle, tmp_path):
    out = tmp_path / "load.json"
    result = CliRunner().invoke(cli, ["bench-serve", str(serve_bundle), "--clients", "4", "--seconds", "2",
                                      "--warmup", "1", "--backend", "onnxruntime:fp32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == 0, report["first_errors"]
    assert report["requests"] > 0
    assert report["p50_ms"] <= report["p99_ms"]
    assert report["rss_end_mb"] > 0 and report["rss_start_mb"] > 0
