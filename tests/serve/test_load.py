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


def test_a_load_test_whose_requests_fail_ends_with_one_line_and_the_report(serve_bundle, tmp_path,
                                                                           assert_one_line_error):
    """Figures of a server that refused the requests are no result: the report is written for a
    look, and the command fails with one line naming the first error. (Each request here holds 8
    slices, the server takes at most 4.)"""
    import subprocess
    import sys

    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench-serve", str(serve_bundle), "--clients", "2",
                           "--seconds", "1", "--warmup", "0.5", "--batch", "8", "--max-batch", "4",
                           "--backend", "onnxruntime:fp32", "--json", str(out)], capture_output=True, text=True)
    assert_one_line_error(proc, "request(s) failed during the load test (first: HTTP 400")
    assert "a request holds at most 4 slices (--max-batch), got 8" in proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] > 0 and report["requests"] == 0


def test_sigterm_stops_a_load_test_and_its_server(serve_bundle, tmp_path):
    """Stopped mid-load, bench-serve stops its clients (their threads kept bench-serve alive) and
    its server, and exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "bench-serve", str(serve_bundle), "--clients", "8",
                             "--seconds", "120", "--warmup", "0", "--backend", "onnxruntime:fp32"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while not children:  # the server, once it is started
            assert time.monotonic() < deadline and proc.poll() is None, "no server started"
            children = [int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                        for c in (t / "children").read_text().split()]
            time.sleep(0.1)
        # its messages go to a file: a pipe nobody reads during the load would block a server
        # that logs 64 KB (each failed request logs its traceback)
        assert not os.readlink(f"/proc/{children[0]}/fd/2").startswith("pipe:")
        time.sleep(8)  # started, ready and under load
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=45)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "edgeseg: stopped (SIGTERM)"
    for pid in children:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        assert Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", f"server {pid} left running"
