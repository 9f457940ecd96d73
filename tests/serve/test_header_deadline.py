"""`edgeseg serve` closes a connection that does not complete a request's headers within
--timeout seconds (uvicorn has no such limit), whether it sends nothing, part of a header, or
stalls after an answer on a kept-alive connection; a request sent in time is answered."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("fastapi")


def _closed_by_server(sock: socket.socket) -> bytes:
    """What the server sends before it closes ``sock`` (b"" when nothing); fails if it keeps the
    connection open for 60 s, twenty times the deadline of the server under test."""
    sock.settimeout(60)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/live HTTP/1.1\r\nHo"])
def test_a_connection_without_whole_headers_is_closed(serve_bundle, serve_process, sent):
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--timeout", "1") as (_, port):
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(sent)
            assert _closed_by_server(slow) == b""
        with socket.create_connection(("127.0.0.1", port)) as prompt:  # the server serves on
            prompt.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert _closed_by_server(prompt).startswith(b"HTTP/1.1 200 OK")


def test_a_kept_alive_connection_stalling_in_its_next_headers_is_closed(serve_bundle, serve_process):
    """After one answer the connection is kept alive; the next request's first bytes stop
    uvicorn's keep-alive timer, and then only the header deadline closes it."""
    with serve_process(serve_bundle, "--backend", "onnxruntime:fp32", "--timeout", "1") as (_, port):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            conn.settimeout(30)
            first = conn.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK"), first
            conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
            assert _closed_by_server(conn) == b""
