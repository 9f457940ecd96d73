"""Connection-level behaviour of the real server on 127.0.0.1, driven over raw sockets: clients
that go away or stall mid-body, and what a connection is left fit for after an early answer."""

from __future__ import annotations

import http.client
import logging
import re
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

_PARTIAL = (b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{\"inputs\":")


def _metric(url: str, pattern: str) -> float:
    """The value of the one /metrics sample matching ``pattern`` (0 where there is none yet)."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    match = re.search(pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _wait_for(condition, what: str, limit: float = 30) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_client_gone_mid_body_is_not_a_server_failure(server):
    """The server's own failures are 500s in /metrics and logged with a traceback; a client that
    closes its connection half-way through the body is neither: it is counted as 499."""
    closed = r'edgeseg_requests_total\{code="499",endpoint="model_infer"\}'
    failed = r'edgeseg_requests_total\{code="500",endpoint="model_infer"\}'
    before_closed, before_failed = _metric(server.url, closed), _metric(server.url, failed)
    records = _Records()
    watched = [logging.getLogger("edgeseg.serve"), logging.getLogger("uvicorn.error")]
    for logger in watched:
        logger.addHandler(records)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(_PARTIAL)
        _wait_for(lambda: _metric(server.url, closed) + _metric(server.url, failed) > before_closed + before_failed,
                  "the request was counted")
    finally:
        for logger in watched:
            logger.removeHandler(records)
    assert _metric(server.url, closed) == before_closed + 1
    assert _metric(server.url, failed) == before_failed
    assert [r.getMessage() for r in records.records] == []


def _read_until_closed(sock: socket.socket, limit: float = 30) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``limit`` s)."""
    sock.settimeout(limit)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_body_that_stops_arriving_is_a_408_and_the_connection_closes(server_factory):
    """Headers and 10 of 100000 body bytes, then nothing: after --timeout seconds without a byte the
    server answers 408 and closes the connection, instead of holding it (and its task) for good."""
    server = server_factory(timeout_s=1.0)
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(_PARTIAL)
        reply = _read_until_closed(client)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b"\r\nconnection: close" in head.lower()
    assert body.startswith(b'{"error":"no request body bytes arrived for 1.0 s (10 received)"}')


@pytest.mark.parametrize("path,status", [
    ("/v2/health/live", 200), ("/v2/health/ready", 200), ("/v2/models/edgeseg/ready", 200),
    ("/v2/models/edgeseg/versions/1/ready", 200), ("/v2/models/nope/ready", 404), ("/v2", 200), ("/metrics", 200),
])
def test_head_answers_as_get_does_without_a_body(server, path, status):
    """Health checkers and load balancers probe with HEAD: it gets GET's status and headers."""
    host, port = server.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    got = conn.getresponse()
    got_body = got.read()
    conn.request("HEAD", path)
    head = conn.getresponse()
    assert (head.status, head.read()) == (status, b"")
    assert got.status == status
    assert head.getheader("content-type") == got.getheader("content-type")
    if path != "/metrics":  # the scrape itself changes the next scrape's counts
        assert head.getheader("content-length") == str(len(got_body))
    conn.close()


def test_a_wrong_method_is_405_naming_get_and_head(server):
    host, port = server.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("DELETE", "/v2/health/live")
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (405, b'{"error":"method DELETE is not allowed on /v2/health/live"}')
    assert sorted(m.strip() for m in reply.getheader("allow").split(",")) == ["GET", "HEAD"]
    conn.close()


@pytest.mark.parametrize("path,length,status", [
    ("/v2/models/edgeseg/infer", 1 << 40, 413), ("/v2/models/nope/infer", 1000, 404),
])
def test_an_answer_before_the_body_closes_the_connection(server, path, length, status):
    """A client waiting on ``Expect: 100-continue`` that gets the final answer instead does not
    send its body; the server closes the connection rather than keep it open, where the client's
    next request would be read as the unsent body and never answered."""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       f"Content-Length: {length}\r\n\r\n".encode())
        reply = _read_until_closed(client)
    head = reply.partition(b"\r\n\r\n")[0]
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    assert b"\r\nconnection: close" in head.lower()


def test_a_body_sent_after_100_continue_is_read_and_the_connection_kept(server):
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.settimeout(30)
        client.sendall(b"POST /v2/models/edgeseg/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 2\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 100 ")
        client.sendall(b"{}")
        head = client.recv(65536).partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 400 ") and b"connection:" not in head.lower()


def test_a_client_sending_its_body_unasked_keeps_its_connection(server):
    """Without ``Expect`` the client sends its whole body at once: the server drops what it did
    not need and the connection carries the next request (closing it under the sending client
    would reset it before the client read the answer)."""
    host, port = server.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v2/models/nope/infer", body=b"x" * 100000)
    reply = conn.getresponse()
    assert (reply.status, reply.getheader("connection")) == (404, None)
    reply.read()
    sock = conn.sock
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200 and conn.sock is sock
    conn.close()


def test_health_is_answered_while_a_request_body_is_decoded(server, monkeypatch):
    """Decoding a large JSON body takes seconds; a liveness probe meanwhile must not wait for it
    (a probe's default timeout is 1 s). The decoding is held until the probe is answered, or 20 s."""
    import edgeseg.serve.app as app_module

    real, decoding, probed, released = app_module.decode_request, threading.Event(), threading.Event(), threading.Event()

    def held(*args):
        decoding.set()
        probed.wait(20)
        released.set()
        return real(*args)

    monkeypatch.setattr(app_module, "decode_request", held)
    host, port = server.url.split(":")
    replies = []

    def infer() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v2/models/edgeseg/infer", body=b"{}")
        replies.append(conn.getresponse().status)
        conn.close()

    sender = threading.Thread(target=infer)
    sender.start()
    try:
        assert decoding.wait(30)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().status == 200
        conn.close()
        answered_while_decoding = not released.is_set()
    finally:
        probed.set()
        sender.join(60)
    assert answered_while_decoding
    assert replies == [400]  # the held request itself is still answered
