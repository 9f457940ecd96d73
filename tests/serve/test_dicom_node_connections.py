"""The DICOM node's bounds on open TCP connections (--max-connections, --max-connections-per-host):
raw sockets that connect and send nothing, from 127.0.0.2 where the test needs a host other than
the scanner's, beside dcmtk's echoscu and storescu from 127.0.0.1 as the scanner that must get in.
The peer timeout is 60 s throughout and every wait here is bounded well under it, so what the
tests see is the node's doing as the connections come and go, not its timer."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

PEER_TIMEOUT = 60
BOUND = 20  # how long a test waits for what the node does at once; a third of the peer timeout


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    try:
        sock.bind((source, 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind the loopback address {source} as a second host: {exc}")
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_by_node(sock: socket.socket, timeout: float = BOUND) -> bool:
    """Whether the node ends the connection within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset: closed too
        return True


def _echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=60)


def _settle(node) -> None:
    """Wait until the connection that found the port open (the fixture's) has left the node's
    count: the node may accept it only after an echo is answered, and once that has gone too."""
    # Under a limit of one connection per host the fixture's connection, still open, got the echo
    # refused, and a refusal is counted and audited: a test counting its own refusals found one
    # more. The limits are lifted while the node settles.
    limits = node._connections
    saved = limits.total, limits.per_host
    limits.total = limits.per_host = 1 << 20
    try:
        assert _wait_for(lambda: _echo(node.port).returncode == 0, BOUND)
        assert _wait_for(lambda: node._connections.open_connections() == 0, BOUND)
    finally:
        limits.total, limits.per_host = saved


def _idle(node, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """``count`` connections that send nothing, opened once the node has none open."""
    _settle(node)
    return [_connect(node.port, source) for _ in range(count)]


def test_a_host_past_its_connection_limit_is_refused_and_the_scanner_gets_in(running_node, caplog):
    """A host opening connections that send nothing kept every association slot (pynetdicom counts
    a connection against --max-associations from its accept, and held it until --peer-timeout):
    storescu from the scanner was rejected. Past --max-connections-per-host, its next connection is
    refused as it is accepted, with one log line, and closed (it sends no request to answer, and
    the refusal waits a few seconds at most), while the scanner's series goes through."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    files = sorted(SERIES.glob("*.dcm"))
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=4, max_connections_per_host=3) as node:
        held = _idle(node, 3, source="127.0.0.2")
        extra = _connect(node.port, source="127.0.0.2")
        with contextlib.ExitStack() as stack:
            for sock in (*held, extra):
                stack.enter_context(contextlib.closing(sock))
            extra_closed = _closed_by_node(extra)
            held_open = not any(_closed_by_node(sock, timeout=0.2) for sock in held)
            sent = _storescu(node.port, files)
            assert _wait_for(lambda: node.stats.received == len(files), BOUND), node.stats
    assert extra_closed, "the node kept a connection past --max-connections-per-host open"
    assert held_open, "the node closed a connection within the limit"
    assert sent.returncode == 0, sent.stderr
    assert node.stats.refused_connections == 1
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a connection")]
    assert line.startswith("refused a connection from 127.0.0.2:") and "--max-connections-per-host" in line, line


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_host"])
def test_the_connection_past_the_limit_is_refused_and_the_node_recovers_when_they_close(running_node, limit):
    """All from 127.0.0.1: with either limit at 2, two idle connections leave none for echoscu,
    which is refused (what it prints: test_dicom_node_refusals.py); once they close, echoscu is answered at once (before, a
    connection closed before its request held its slot until the peer timeout)."""
    options = {"max_associations": 2, "max_connections": 2 if limit == "max_connections" else 8,
               "max_connections_per_host": 2}
    with running_node(peer_timeout=PEER_TIMEOUT, **options) as node:
        held = _idle(node, 2)
        assert _wait_for(lambda: node._connections.open_connections() == 2, BOUND)
        refused = _echo(node.port)
        for sock in held:
            sock.close()
        answered = _wait_for(lambda: _echo(node.port).returncode == 0, BOUND)
    assert refused.returncode != 0, "echoscu got a connection past the limit"
    assert node.stats.refused_connections >= 1
    assert answered, "the slots of the closed connections were not freed"


@pytest.mark.parametrize("sent", [b"", b"\x01\x00\x00"])
def test_a_connection_closed_before_its_request_frees_its_association_slot(running_node, sent):
    """pynetdicom's association thread waited for the request for its ACSE timeout (--peer-timeout)
    whatever became of the connection: a port scan, or a peer that gave up halfway through its
    request's header, held the one association slot for 60 s. It is freed as the connection ends."""
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=1) as node:
        with contextlib.closing(_connect(node.port)) as sock:
            sock.sendall(sent)
        answered = _wait_for(lambda: _echo(node.port).returncode == 0, BOUND)
    assert answered, "a connection closed before its request kept the association slot"


def test_a_flood_of_idle_connections_holds_the_threads_of_the_limit_and_one_log_line(running_node, caplog):
    """Each accepted connection has two threads until its request comes (up to --peer-timeout):
    50 idle connections were 100 threads. With --max-connections 4 the node holds those of 4, and
    logs the 46 refused in one line as they come and one summary line (here at the stop)."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=4, max_connections=4,
                      max_connections_per_host=4) as node:
        _settle(node)
        baseline = threading.active_count()
        socks = _idle(node, 50)
        try:
            assert _wait_for(lambda: node.stats.refused_connections == 46, BOUND), node.stats
            threads = threading.active_count() - baseline
        finally:
            for sock in socks:
                sock.close()
    assert threads <= 2 * 4, f"{threads} threads for 4 admitted connections"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(lines) == 2, lines
    assert "--max-connections allows" in lines[0]
    assert lines[1].startswith("refused 45 more connection(s) in the last"), lines[1]


@pytest.mark.parametrize("options,fragment", [
    (["--max-connections", "5"], "--max-connections (5) is below --max-associations (10)"),
    (["--max-connections-per-host", "40"], "--max-connections-per-host (40) is over --max-connections (32)"),
    (["--max-connections", "0"], "Invalid value for '--max-connections': 0 is not in the range 1<=x<=10000"),
    (["--max-associations-per-ae", "0"], "Invalid value for '--max-associations-per-ae': 0 is not in the range 1<=x<=1000"),
])
def test_a_bad_connection_limit_is_one_line(tmp_path, options, fragment, assert_one_line_error):
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(tmp_path / "no-bundle"),
                           "--out", str(tmp_path / "out"), *options], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out").exists()


def test_a_stop_with_connections_waiting_for_their_request_prints_no_traceback(serve_bundle, tmp_path, free_port,
                                                                              wait_port):
    """SIGTERM with connections open that had sent nothing: the stop aborted every association, and
    pynetdicom's reader of one still waiting for its request raised InvalidEventError (an A-ABORT
    there is no valid event), a traceback on stderr. Those now end with their connection."""
    from tests.serve.test_dicom_node_hostile import start_listen

    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path, "--peer-timeout", str(PEER_TIMEOUT))
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: _echo(port).returncode == 0, BOUND)
        socks = [_connect(port) for _ in range(8)]
        assert _echo(port).returncode != 0  # the eighth from this host took the last of its connections
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        for sock in socks:
            sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "refused a connection from 127.0.0.1:" in err, err
