"""`edgeseg serve` stopped by SIGTERM (a service manager's stop) shuts down gracefully and exits
0, as `edgeseg listen` does: a request in flight is answered, new connections are refused, and a
stalled client does not keep it up."""

from __future__ import annotations

import json
import signal
import socket
import time

import numpy as np

from tests.serve.http_util import http_request


def _refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _read_by_now(port: int) -> None:
    """Return once the server at ``port`` has read what a connection opened earlier sent it: it
    answers a request on a later connection, and its event loop takes each readable connection in
    turn, in the order they came, so the earlier one's bytes were read before this answer. (A
    fixed delay is not enough on a busy machine: a connection whose request head the server has
    not read yet is idle, and a shutdown closes an idle connection unanswered.)"""
    status, _, _ = http_request(f"127.0.0.1:{port}", "GET", "/v2/health/live")
    assert status == 200


def test_sigterm_stops_serve_with_exit_0(serve_bundle, serve_process):
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32") as (proc, _):
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "edgeseg: " not in stderr, stderr


def test_a_request_in_flight_at_sigterm_is_answered(serve_bundle, serve_process):
    """The client has sent half its body when the signal comes; once the server refuses new
    connections (it is shutting down), the client sends the rest and gets its logits."""
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    head = (b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32") as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(head + body[:len(body) // 2])
            _read_by_now(port)  # the server has the request's head: the request is in flight
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not _refuses_connections(port):
                assert time.monotonic() < deadline, "the server never stopped listening"
                time.sleep(0.05)
            client.sendall(body[len(body) // 2:])
            client.settimeout(30)
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
        _, stderr = proc.communicate(timeout=60)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", reply[:300]
    answer = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert answer["outputs"][0]["shape"][0] == 1
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_a_client_stalled_mid_body_does_not_hold_up_the_stop(serve_bundle, serve_process):
    """A client sends the headers and 10 of 100000 body bytes, then nothing: after SIGTERM the
    server waits for requests in flight at most their --timeout (+5 s), then stops anyway."""
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--timeout", "1") as (proc, port):
        with socket.create_connection(("127.0.0.1", port)) as stalled:
            stalled.sendall(b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 100000\r\n\r\n{\"inputs\":")
            _read_by_now(port)  # the stalled request is in flight, not a connection still to accept
            proc.send_signal(signal.SIGTERM)
            # --timeout 1 gives 6 s of grace; the stalled client would otherwise hold the server for good
            _, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
