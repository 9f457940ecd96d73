"""`edgeseg serve` stopped by SIGTERM (a service manager's stop) shuts down gracefully and exits
0, as `edgeseg listen` does: a request in flight is answered, new connections are refused, and a
stalled client does not keep it up."""

from __future__ import annotations

import json
import signal
import socket
import time

import numpy as np


def _refuses_connections(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


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
            time.sleep(0.5)  # the server reads the first half (no timing is asserted)
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
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            # --timeout 1 gives 6 s of grace; the stalled client would otherwise hold the server for good
            _, stderr = proc.communicate(timeout=40)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
