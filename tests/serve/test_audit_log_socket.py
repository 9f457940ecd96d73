"""``--audit-log /dev/stdout`` where stdout is a stream socket: systemd's
``StandardOutput=journal`` gives a service one. A socket cannot be opened by name (ENXIO), and
the audit log used to refuse it at start; it now writes through the descriptor the process holds,
as for a pipe another user made, each send bounded in time. A socket's path given directly
is still refused, in one line saying what to do instead."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from edgeseg.errors import DataError
from edgeseg.serve.audit import AuditLog, AuditLogError
from tests.serve.http_util import wait_ready
from tests.serve.test_audit_log_pipe import _drain, _fill_until_refused, assert_whole_lines_then_after

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}

WRITER = textwrap.dedent("""
    from edgeseg.serve.audit import AuditLog
    log = AuditLog("/dev/stdout", {"manifest_sha256": "0" * 64})
    for n in range(3):
        log.record("http_request", n=n, path="/v2/models/edgeseg/infer" + "x" * 20000)
    log.close()
""")


def _lines(reader: socket.socket) -> list[dict]:
    """The JSON lines read from ``reader`` until its other end closes; a line that is not JSON
    (serve's start-up line, which went to stdout too) fails the test."""
    got = b""
    while chunk := reader.recv(1 << 16):
        got += chunk
    return [json.loads(line) for line in got.decode().splitlines()]  # every line: the start-up line is on stderr


def test_audit_lines_reach_a_stream_socket_on_stdout():
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with reader, theirs:
        proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=theirs, stderr=subprocess.PIPE, env=ENV,
                                text=True)
        theirs.close()  # the child holds the only write end: its exit ends the stream
        lines = _lines(reader)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [line["n"] for line in lines] == [0, 1, 2]  # whole lines (20 KB each, past PIPE_BUF), in order
    assert lines[0]["bundle"] == {"manifest_sha256": "0" * 64}


def test_serve_records_its_requests_to_a_socket_on_stdout(serve_bundle, free_port):
    """A real ``edgeseg serve`` with a unix stream socket as its stdout, as systemd starts a
    service whose output goes to the journal."""
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    port = free_port()
    with reader, theirs:
        proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--port", str(port),
                                 "--backend", "onnxruntime:fp32", "--audit-log", "/dev/stdout"],
                                stdout=theirs, stderr=subprocess.PIPE, env=ENV, text=True)
        theirs.close()
        try:
            wait_ready(proc, port)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/edgeseg", timeout=60) as answer:
                assert answer.status == 200
        finally:
            proc.terminate()
            stderr = proc.communicate(timeout=60)[1]
        lines = _lines(reader)
    assert [line for line in stderr.splitlines() if line.startswith("serving ")], stderr  # said, where no JSON goes
    asked = [line for line in lines if line.get("path") == "/v2/models/edgeseg"]
    assert len(asked) == 1 and asked[0]["status"] == 200 and asked[0]["event"] == "http_request"
    assert asked[0]["bundle"]["manifest_sha256"]


def test_a_stalled_socket_reader_costs_lines_not_a_stuck_writer():
    """The journal falling behind leaves the socket full: a line waits its bounded time and is
    lost, the writer goes on; once the reader catches up, lines go through whole again. The write
    end stays blocking, as a process's stdout does."""
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with reader, theirs:
        log = AuditLog(f"/dev/fd/{theirs.fileno()}")  # a socket of this process's own, by name
        try:
            assert theirs.getblocking()
            errors = _fill_until_refused(log, 20000)
            assert errors == [f"cannot append to the audit log /dev/fd/{theirs.fileno()}: its reader takes nothing more"]
            reader.setblocking(False)
            shipped = _drain(reader.fileno())
            log.record("http_request", n="after", path="y")
            shipped += _drain(reader.fileno())
        finally:
            log.close()
        assert theirs.getblocking() and theirs.fileno() >= 0  # the audit log closed its own copy only
    assert_whole_lines_then_after(shipped)


def test_a_socket_whose_reader_left_loses_the_line_with_an_error():
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with theirs:
        log = AuditLog(f"/dev/fd/{theirs.fileno()}")
        try:
            log.record("http_request", n=0)
            assert json.loads(reader.recv(1 << 16))["n"] == 0
            reader.close()
            with pytest.raises(AuditLogError, match="Broken pipe"):
                log.record("http_request", n=1)
        finally:
            log.close()


def test_a_socket_named_by_its_path_is_refused_in_one_line(tmp_path):
    path = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listening:
        listening.bind(str(path))
        listening.listen()
        with pytest.raises(DataError) as refused:
            AuditLog(path)
    assert str(refused.value) == (f"--audit-log {path} is a socket, which cannot be opened by name; give the "
                                  "command's stdout to it and name /dev/stdout (systemd: StandardOutput=journal)")


def test_a_datagram_socket_on_stdout_is_refused_in_one_line():
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reader, theirs, pytest.raises(DataError) as refused:
        AuditLog(f"/dev/fd/{theirs.fileno()}")
    assert "is a socket other than a stream" in str(refused.value)


def test_listen_says_where_it_listens_on_stderr_when_its_audit_log_is_stdout(serve_bundle, free_port, tmp_path):
    """``edgeseg listen --audit-log /dev/stdout``: stdout holds the audit's JSON lines alone (an
    association's line here); the start-up line goes to stderr."""
    reader, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    port = free_port()
    with reader, theirs:
        proc = subprocess.Popen([sys.executable, "-m", "edgeseg.cli", "listen", str(serve_bundle), "--port", str(port),
                                 "--out", str(tmp_path / "out"), "--backend", "onnxruntime:fp32",
                                 "--audit-log", "/dev/stdout"], stdout=theirs, stderr=subprocess.PIPE, env=ENV, text=True)
        theirs.close()
        try:
            deadline = time.monotonic() + 120
            while True:  # the port opens once the model is loaded
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
                assert proc.poll() is None and time.monotonic() < deadline, "edgeseg listen did not start"
                time.sleep(0.2)
            echo = subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)], capture_output=True,
                                  text=True, timeout=60)
            assert echo.returncode == 0, echo.stderr
        finally:
            proc.terminate()
            stderr = proc.communicate(timeout=60)[1]
        lines = _lines(reader)
    assert "listening on" in stderr, stderr
    assert lines and all(isinstance(line, dict) and line.get("event") for line in lines), lines
