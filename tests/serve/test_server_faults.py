"""A failure of the server itself, provoked for real on `edgeseg serve` processes on 127.0.0.1:
the client gets 500 with a message naming only its request's ID, never the failure's text,
which may name the server's files or the hosts behind it; the server's log and its audit log
have the whole text under that ID."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

from tests.serve.http_util import http_request

pytest.importorskip("fastapi")

GENERIC = "internal server error; the server's log has the details under request ID {}"


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _audit_line(audit, rid: str) -> dict:
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    mine = [line for line in lines if line.get("request_id") == rid]
    assert len(mine) == 1, lines
    return mine[0]


def test_an_upload_folder_gone_bad_after_start_is_a_500_naming_no_path(serve_process, serve_bundle, tmp_path):
    uploads, audit = tmp_path / "uploads", tmp_path / "audit.log"
    uploads.mkdir()
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--upload-dir", str(uploads),
                       "--audit-log", str(audit)) as (proc, port):
        # the folder checked at start is replaced by a file, as a clean-up job or a mistyped
        # mount can do to a server that has run for days
        os.rmdir(uploads)
        uploads.write_bytes(b"")
        status, headers, body = http_request(f"127.0.0.1:{port}", "POST", "/v1/segment?format=npy",
                                             _npy(np.zeros((1, 32, 32), np.int16)), {"X-Request-ID": "upload-1"})
        proc.terminate()
        stderr = proc.communicate(timeout=60)[1]
    assert status == 500 and headers["X-Request-ID"] == "upload-1"
    assert json.loads(body) == {"error": GENERIC.format("upload-1")}
    line = _audit_line(audit, "upload-1")
    assert line["status"] == 500 and str(uploads) in line["error"] and "Not a directory" in line["error"], line
    logged = [row for row in stderr.splitlines() if "upload-1" in row]
    assert len(logged) == 1 and str(uploads) in logged[0] and "Not a directory" in logged[0], stderr


@pytest.fixture
def orphaned_server(serve_process, serve_bundle, tmp_path):
    """An `edgeseg serve` whose backend is another `edgeseg serve` (the remote backend), which has
    stopped since: every model call fails, with an error naming the upstream's address."""
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32") as (upstream, upstream_port):
        remote = f"http://127.0.0.1:{upstream_port}/models/edgeseg"
        with serve_process(serve_bundle, "--backend", remote, "--audit-log", str(tmp_path / "audit.log")) as (proc, port):
            upstream.terminate()
            upstream.wait(timeout=60)
            yield proc, port, upstream_port


@pytest.mark.parametrize("model,inputs", [
    ("edgeseg", {"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32", "data": [0.0] * 64 * 64}),
    ("edgeseg-pipeline", {"name": "hu", "shape": [1, 32, 32], "datatype": "INT16", "data": [-100] * 32 * 32}),
])
def test_a_backend_that_fails_after_start_is_a_500_naming_no_host(orphaned_server, tmp_path, model, inputs):
    proc, port, upstream_port = orphaned_server
    body = json.dumps({"inputs": [inputs]}).encode()
    status, headers, answer = http_request(f"127.0.0.1:{port}", "POST", f"/v2/models/{model}/infer", body,
                                           {"Content-Type": "application/json"})
    rid = headers["X-Request-ID"]
    proc.terminate()
    stderr = proc.communicate(timeout=60)[1]
    assert status == 500 and json.loads(answer) == {"error": GENERIC.format(rid)}
    line = _audit_line(tmp_path / "audit.log", rid)
    assert f"127.0.0.1:{upstream_port}" in line["error"] and line["model"] == model, line
    logged = [row for row in stderr.splitlines() if rid in row]
    assert len(logged) == 1 and f"127.0.0.1:{upstream_port}" in logged[0], stderr
