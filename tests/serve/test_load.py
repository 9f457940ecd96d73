"""A short load test through the real `edgeseg serve` process: no request may fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeseg.cli.main import cli
from tests.bundle_edits import filter_liver_by_ml
from tests.guarded_cli import GuardedCliRunner


def test_short_load_has_no_errors_and_bounded_memory(serve_bundle, tmp_path):
    out = tmp_path / "load.json"
    result = GuardedCliRunner().invoke(cli, ["bench-serve", str(serve_bundle), "--clients", "4", "--seconds", "2",
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
    result = GuardedCliRunner().invoke(cli, args + (["--triton"] if triton else []))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # every answer was checked to hold 96*96 uint8 labels per slice; none may fail
    assert report["errors"] == 0, report["first_errors"]
    assert report["requests"] > 0 and report["model"] == "edgeseg-pipeline" and report["size"] == 96
    assert report["backend"].startswith("tritonserver" if triton else "edgeseg serve")


def test_triton_load_needs_an_explicit_backend(serve_bundle):
    result = GuardedCliRunner().invoke(cli, ["bench-serve", str(serve_bundle), "--triton", "--seconds", "1"])
    assert result.exit_code == 2
    assert "--triton needs --backend NAME:PRECISION" in result.output


def test_a_load_test_whose_requests_fail_ends_with_one_line_and_the_report(serve_bundle, tmp_path,
                                                                           assert_one_line_error):
    """Figures of a server that refused the requests are no result: the report is written for a
    look, and the command fails with one line naming the first error. (The bundle here takes
    slices of its model's size only; the clients send larger ones.)"""
    import shutil
    import subprocess
    import sys

    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["resize_input"] = False
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    side = manifest["spec"]["size"][0] + 16
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench-serve", str(bundle), "--clients", "2",
                           "--seconds", "1", "--warmup", "0.5", "--model", "edgeseg-pipeline", "--size", str(side),
                           "--backend", "onnxruntime:fp32", "--json", str(out)], capture_output=True, text=True)
    assert_one_line_error(proc, "request(s) failed during the load test (first: HTTP 400")
    assert f"slices are {side}x{side} but this bundle takes" in proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] > 0 and report["requests"] == 0


@pytest.mark.parametrize(("batch", "max_batch", "limit"), [(8, 4, "--max-batch 4"), (9, 16, "the bundle's max batch 8")])
def test_a_batch_the_server_would_refuse_is_one_error_before_any_server_starts(serve_bundle, tmp_path, batch,
                                                                                max_batch, limit, assert_one_line_error):
    """The server takes at most min(--max-batch, the bundle's max batch) slices a request: a load
    of larger requests is refused at once, not after a warm-up and a run of 400 answers."""
    import subprocess
    import sys

    from edgeseg.runtime.manifest import read_manifest

    assert read_manifest(serve_bundle).max_batch == 8  # the oracle for the second case
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench-serve", str(serve_bundle), "--clients", "2",
                           "--seconds", "30", "--warmup", "30", "--batch", str(batch), "--max-batch", str(max_batch),
                           "--backend", "onnxruntime:fp32", "--json", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, f"--batch {batch} is above {limit}; the server would refuse every request")
    assert "starting" not in proc.stdout and not out.exists()


def test_a_server_that_does_not_start_is_named_by_its_own_error(serve_bundle, tmp_path, assert_one_line_error):
    """The server's refusal came through as a Python list: edgeseg serve exited: ['edgeseg: error: ...']."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "bench-serve", str(serve_bundle), "--clients", "1",
                           "--seconds", "1", "--warmup", "0", "--backend", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc, "edgeseg serve did not start: unknown backend 'nope'; known: auto,")
    assert "[" not in proc.stderr


def test_sigterm_stops_a_load_test_and_its_server(serve_bundle, tmp_path):
    """Stopped mid-load, bench-serve stops its clients (their threads kept bench-serve alive) and
    its server, and exits 143."""
    import os
    import signal
    import subprocess
    import sys
    import time

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


def test_the_report_gives_the_max_batch_the_server_ran_with(serve_bundle, tmp_path):
    """The server caps --max-batch at the bundle's max batch; the report says what it ran with."""
    from edgeseg.runtime.manifest import read_manifest

    out = tmp_path / "load.json"
    result = GuardedCliRunner().invoke(cli, ["bench-serve", str(serve_bundle), "--clients", "1", "--seconds", "0.5",
                                             "--warmup", "0", "--max-batch", "64", "--backend", "onnxruntime:fp32",
                                             "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["max_batch"] == read_manifest(serve_bundle).max_batch == 8


def test_pipeline_load_on_a_bundle_that_filters_by_ml_sends_the_phantom_s_spacing(serve_bundle, tmp_path):
    """Such a bundle refuses a pipeline request without ``spacing``; the load's requests carry the
    voxel size of the phantom they are cut from, so none of them may fail."""
    import shutil

    bundle = filter_liver_by_ml(Path(shutil.copytree(serve_bundle, tmp_path / "bundle")), 0.01)
    out = tmp_path / "load.json"
    result = GuardedCliRunner().invoke(cli, ["bench-serve", str(bundle), "--model", "edgeseg-pipeline", "--size", "64",
                                             "--clients", "2", "--seconds", "1", "--warmup", "0.5", "--batch", "2",
                                             "--backend", "onnxruntime:fp32", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["errors"] == 0, report["first_errors"]
    assert report["requests"] > 0
