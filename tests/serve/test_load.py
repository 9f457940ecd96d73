"""A short load test through the real `edgeseg serve` process: no request may fail."""

from __future__ import annotations

import json

import pytest
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


@pytest.mark.parametrize("triton", [False, True], ids=["edgeseg-serve", "tritonserver"])
def test_pipeline_load_returns_labels_of_the_slice_size(serve_bundle, tmp_path, triton):
    from edgeseg.serve.triton_launch import pytriton_root

    if triton and pytriton_root() is None:
        pytest.skip("tritonserver comes with the nvidia-pytriton wheel: pip install nvidia-pytriton")
    out = tmp_path / "load.json"
    args = ["bench-serve", str(serve_bundle), "--model", "edgeseg-pipeline", "--size", "96", "--clients", "3",
            "--seconds", "2", "--warmup", "1", "--backend", "onnxruntime:fp32", "--json", str(out)]
    result = CliRunner().invoke(cli, args + (["--triton"] if triton else []))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # every answer was checked to hold 96*96 uint8 labels per slice; none may fail
    assert report["errors"] == 0, report["first_errors"]
    assert report["requests"] > 0 and report["model"] == "edgeseg-pipeline" and report["size"] == 96
    assert report["backend"].startswith("tritonserver" if triton else "edgeseg serve")


def test_triton_load_needs_an_explicit_backend(serve_bundle):
    result = CliRunner().invoke(cli, ["bench-serve", str(serve_bundle), "--triton", "--seconds", "1"])
    assert result.exit_code == 2
    assert "--triton needs --backend NAME:PRECISION" in result.output
