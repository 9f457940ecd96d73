"""A stop of ``edgeseg serve --grpc-port`` (SIGTERM) refuses new gRPC calls from its start, while
the HTTP requests in flight drain, and ends with exit status 0."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.serve.grpc_util import grpc_serve_process, refusal, stub

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.grpc")


def test_grpc_refuses_new_calls_while_http_drains(serve_bundle, serve_process):
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32",
                            "--timeout", "60") as (proc, port, grpc_port):
        service, pb = stub(grpc_port)
        assert service.ServerLive(pb.ServerLiveRequest(), timeout=30).live
        # an HTTP request in flight: its body never comes, so the HTTP drain lasts (up to --timeout)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{")
        time.sleep(0.5)  # the request reaches the app (not a timing assertion: without it the drain is shorter)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:  # the shutdown has begun once the HTTP port takes no new connection
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) != 0:
                    break
            assert time.monotonic() < deadline, "the HTTP port still listens 30 s after SIGTERM"
            time.sleep(0.1)
        assert proc.poll() is None, "the server ended before its HTTP request in flight"
        fresh, pb = stub(grpc_port)
        code, _ = refusal(fresh.ServerLive, pb.ServerLiveRequest())
        assert code in ("UNAVAILABLE", "CANCELLED")  # grpcio 1.51 (the floor) cancels it, recent ones refuse it
        stalled.close()
        assert proc.wait(timeout=90) == 0
