"""The DICOM node against peers that keep it waiting: raw sockets that open a connection and send
nothing, half a PDU header, half an association request, a whole one and then nothing, or half a
P-DATA-TF PDU, each holding an association slot until its connection is closed; and, beside them,
dcmtk's echoscu and storescu and pynetdicom's SCU as the live scanner that must get through."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_hostile import _associate_rq, _recv_pdu, start_listen

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

# What the test waits for the node to close a stalled connection: many times the peer timeout
# used here (1 s), and less than pynetdicom's own ACSE (30 s) and network (60 s) timeouts, which
# closed some kinds of stall on their own before.
CLOSE_BOUND = 20
STALLS = ["nothing", "half a PDU header", "half an association request", "an association request",
          "half a P-DATA-TF PDU"]
# what the node logs for each (the first is closed by pynetdicom's ACSE timer, set to the same time)
LOGGED = {"half a PDU header": "sent 3 of the 6 bytes of a PDU header and then nothing",
          "half an association request": "bytes of an A-ASSOCIATE-RQ and then nothing",
          "an association request": "sent nothing after its last PDU",
          "half a P-DATA-TF PDU": "sent 50 of the 100 bytes of a P-DATA-TF PDU and then nothing"}


def _stall(port: int, kind: str) -> socket.socket:
    """A connection to the node on which the peer sends ``kind`` and then nothing more."""
    request = _associate_rq()
    deadline = time.monotonic() + CLOSE_BOUND
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_BOUND)
        if kind not in ("an association request", "half a P-DATA-TF PDU"):
            sock.sendall({"nothing": b"", "half a PDU header": request[:3]}.get(kind, request[:len(request) // 2]))
            return sock
        sock.sendall(request)
        if _recv_pdu(sock)[:1] == b"\x02":  # A-ASSOCIATE-AC
            break
        # rejected: pynetdicom counts an association's thread until it has seen its connection
        # close, so the one before this may hold a slot a moment longer
        sock.close()
        assert time.monotonic() < deadline, "the node rejected every association request"
        time.sleep(0.2)
    if kind == "half a P-DATA-TF PDU":
        sock.sendall(struct.pack(">BBI", 0x04, 0, 100) + bytes(50))
    return sock


def _closed_by_node(sock: socket.socket) -> bool:
    """Whether the node closes the connection within CLOSE_BOUND seconds (what it sends before,
    an A-ABORT, is read and dropped)."""
    deadline = time.monotonic() + CLOSE_BOUND
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            if not sock.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:  # reset: closed too
        return True
    return False


def _echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(port)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("kind", STALLS)
def test_a_stalled_peer_is_closed_and_its_association_slot_freed(running_node, caplog, kind):
    """pynetdicom's accepted sockets have no timeout: a peer that sent part of a PDU and stopped held
    the connection, its threads and an association slot for good (its ACSE and network timeouts
    closed a silent connection after 30 s and an idle association after 60 s, but not one stopped
    inside a PDU). With one association allowed, the node closes each stalled connection once it
    has waited --peer-timeout on it, says so in one log line, and echoscu then gets the slot."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    with running_node(peer_timeout=1, max_associations=1) as node:
        # the connection that found the port open holds the one slot until the ACSE timeout
        assert _wait_for(lambda: _echo(node.port).returncode == 0, CLOSE_BOUND)
        # echoscu's connection is let go by the node a moment after echoscu exits: until then the
        # stalled one would be refused for the per-host limit, not closed for its stall
        assert _wait_for(lambda: node._connections.open_connections() == 0, CLOSE_BOUND)
        with contextlib.closing(_stall(node.port, kind)) as stalled:
            closed = _closed_by_node(stalled)
        echoed = _wait_for(lambda: _echo(node.port).returncode == 0, CLOSE_BOUND)
    assert closed, f"the node kept a connection open that sent {kind} and then nothing"
    assert echoed, "echoscu never got the association slot"
    lines = [r.getMessage() for r in caplog.records if "(--peer-timeout)" in r.getMessage()]
    if kind in LOGGED:
        [line] = lines
        assert LOGGED[kind] in line and line.startswith("closed the connection from 127.0.0.1:"), line
        assert node.stats.timed_out_connections == 1



def test_a_peer_trickling_a_pdu_is_closed(running_node):
    """Each byte of an association request a third of the timeout after the one before: the
    connection never falls silent for the timeout, but its PDU does not come in within it."""
    request = _associate_rq()
    closed = False
    with running_node(peer_timeout=1) as node, socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.settimeout(1 / 3)
        deadline = time.monotonic() + CLOSE_BOUND
        for byte in request:
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(bytes([byte]))
                sock.recv(65536)  # an answer to half a request is an A-ABORT, or the connection's end
                closed = True
                break
            except (socket.timeout, TimeoutError):
                continue  # nothing from the node: the next byte
            except OSError:  # reset, or a broken pipe
                closed = True
                break
        assert closed, f"the node kept reading an association request sent a byte at a time for {CLOSE_BOUND} s"
        assert node.stats.timed_out_connections == 1

def test_a_scanner_locked_out_by_stalled_peers_gets_in_once_they_time_out(serve_bundle, tmp_path, free_port,
                                                                        wait_port):
    """As many stalled connections as --max-associations fill every slot (pynetdicom rejects a
    request past them only once it has read it): the node started with --peer-timeout 1 closes them,
    and a series sent by storescu then is received and segmented as usual."""
    port = free_port()
    out = tmp_path / "out"
    proc = start_listen(serve_bundle, port, tmp_path, "--idle", "1", "--peer-timeout", "1",
                        "--max-associations", str(len(STALLS)))
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: _echo(port).returncode == 0, CLOSE_BOUND)  # every slot free
        stalled = [_stall(port, kind) for kind in STALLS]
        closed = [_closed_by_node(sock) for sock in stalled]
        for sock in stalled:
            sock.close()
        files = sorted(SERIES.glob("*.dcm"))
        sent = None
        for _ in range(CLOSE_BOUND):  # the slots free as each stalled association's thread ends
            sent = _storescu(port, files)
            if sent.returncode == 0:
                break
            time.sleep(1)
        uid = pydicom.dcmread(files[0]).SeriesInstanceUID
        segmented = _wait_for(lambda: (out / f"{uid}.seg.dcm").is_file(), 60)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert closed == [True] * len(STALLS), dict(zip(STALLS, closed))
    assert sent.returncode == 0, sent.stderr
    assert segmented, err
    assert proc.returncode == 0 and "Traceback" not in err, err
    timed_out = [line for line in err.splitlines() if "(--peer-timeout)" in line]
    assert all(any(what in line for line in timed_out) for what in LOGGED.values()), err


def test_a_scanner_pausing_between_images_is_not_cut_off(running_node):
    """The timeout is on each wait for the peer, not on the association: a sender pausing under it
    between images keeps its association, which lasts well past the timeout, and the node's own
    time on an image (here waiting for a lock the test holds past the timeout) is not counted
    against the peer. Every image is stored and the series segmented."""
    files = sorted(SERIES.glob("*.dcm"))
    with running_node(peer_timeout=2, idle=1) as node:
        scu = pynetdicom.AE(ae_title="SCANNER")
        scu.add_requested_context(pynetdicom.sop_class.CTImageStorage)
        assoc = scu.associate("127.0.0.1", node.port, ae_title="EDGESEG")
        assert assoc.is_established
        statuses, started = [], time.monotonic()
        for index, path in enumerate(files):
            time.sleep(1)  # half the timeout
            ds = pydicom.dcmread(path)
            if index == 1:  # the node's handler waits 3 s on its lock: the node's time, not the peer's
                threading.Timer(3, node._lock.release).start()
                node._lock.acquire()
            statuses.append(assoc.send_c_store(ds).Status)
        lasted = time.monotonic() - started
        assoc.release()
        assert _wait_for(lambda: node.stats.segmented, 30), node.stats
    assert statuses == [0, 0, 0] and lasted > 2
    assert node.stats.timed_out_connections == 0 and node.stats.received == 3


def test_a_stop_is_not_held_up_by_a_peer_halfway_through_a_pdu(serve_bundle, tmp_path, free_port, wait_port):
    """SIGTERM aborted the open associations, and each abort waited for its association's reader,
    which a peer that sent half a PDU header held in recv(): the node never stopped (a service
    manager would kill it, leaving its work folder). It now closes the connections first and exits
    0 at once, with the peer timeout at its default of 30 s."""
    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path)
    try:
        wait_port(port, timeout=60)
        with contextlib.closing(_stall(port, "half a PDU header")):
            assert _echo(port).returncode == 0  # the node reads and answers; the stalled reader waits
            proc.send_signal(signal.SIGTERM)
            try:
                _, err = proc.communicate(timeout=CLOSE_BOUND)
            except subprocess.TimeoutExpired:
                err = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert err is not None, "the node did not stop while a peer held half a PDU header"
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert not list(tmp_path.glob("edgeseg-listen-*"))


@pytest.mark.parametrize("options,fragment", [
    (["--peer-timeout", "0"], "Invalid value for '--peer-timeout': 0.0 is not in the range 0.1<=x<=3600"),
    (["--peer-timeout", "nan"], "Invalid value for '--peer-timeout': 'nan' is not a number of seconds"),
    (["--peer-timeout", "soon"], "Invalid value for '--peer-timeout'"),
    (["--max-associations", "0"], "Invalid value for '--max-associations': 0 is not in the range 1<=x<=1000"),
    (["--idle", "nan"], "Invalid value for '--idle': 'nan' is not a number of seconds"),
    (["--resend-every", "NaN"], "Invalid value for '--resend-every': 'NaN' is not a number of seconds"),
    (["--keep-segmented", "-1"], "Invalid value for '--keep-segmented': -1.0 is not in the range 0<=x<=86400"),
])
def test_a_bad_duration_or_association_limit_is_one_line(tmp_path, options, fragment, assert_one_line_error):
    """Checked before the bundle is read (no bundle is named here), and nothing is written. NaN
    passed click's range check (every comparison with it is false): --idle nan started a node whose
    series never counted as complete, --resend-every nan one that never sent a SEG again."""
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "listen", str(tmp_path / "no-bundle"),
                           "--out", str(tmp_path / "out"), *options], capture_output=True, text=True, timeout=120)
    assert_one_line_error(done, fragment)
    assert not (tmp_path / "out").exists()


def test_the_node_checks_its_timeout_and_association_limit():
    """The Python API refuses what the command line cannot pass (NaN slips through click's range)."""
    from edgeseg.errors import DataError
    from edgeseg.serve.dicom_node import DicomNode

    for options, message in [({"peer_timeout": float("nan")}, "--peer-timeout"),
                             ({"peer_timeout": 0}, "--peer-timeout"), ({"max_associations": 0}, "--max-associations"),
                             ({"max_associations": 2.5}, "--max-associations"),
                             ({"keep_segmented": float("nan")}, "--keep-segmented"), ({"keep_segmented": -1}, "--keep-segmented")]:
        with pytest.raises(DataError, match=message):
            DicomNode(object(), out="unused", **options)
