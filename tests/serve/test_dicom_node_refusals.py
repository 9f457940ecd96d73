"""How the DICOM node turns a peer away when its connection slots are full: an A-ASSOCIATE-RJ
(rejected-transient, service-provider (presentation), local-limit-exceeded) that dcmtk's echoscu
and storescu print as such, not a closed connection; and a per-host limit that by default follows
--max-associations, so one host never holds every association slot. Idle raw sockets hold the
slots; dcmtk's tools from 127.0.0.1 and pynetdicom bound to 127.0.0.2 are the peers that ask, and
an A-ASSOCIATE-RQ written on a raw socket from 127.0.0.2 where that host is to be rejected."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess

import pytest

from tests.serve.test_dicom_node import DCMTK, SERIES, _storescu, _wait_for
from tests.serve.test_dicom_node_connections import BOUND, PEER_TIMEOUT, _connect, _echo, _idle, _settle
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_hostile import _associate_rq, _recv_pdu

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")

# what dcmtk 3.6's tools print for an A-ASSOCIATE-RJ with result 2, source 3, reason 2
REJECTED = ("Association Rejected", "Result: Rejected Transient, Source: Service Provider (Presentation Related)",
            "Reason: Local Limit Exceeded")


def _assert_rejected_as_busy(done: subprocess.CompletedProcess) -> None:
    printed = done.stdout + done.stderr
    assert done.returncode != 0, printed
    for line in REJECTED:
        assert line in printed, printed


def _associate_from(source: str, port: int, ae_title: str = "OTHERHOST"):
    """A pynetdicom association for C-ECHO to the node, from ``source`` as its address: for one the
    node is to accept. pynetdicom 3.0 reports a rejection as an abort (``is_aborted``, the
    A-ASSOCIATE-RJ left unread in its queue) when the answer and the node's close after it come
    before its thread, having sent the request, looks at the connection again: on a loaded
    machine, now and then. A rejection is read off a raw socket instead (_rejection_from)."""
    ae = pynetdicom.AE(ae_title=ae_title)
    ae.add_requested_context(pynetdicom.sop_class.Verification)
    ae.acse_timeout = BOUND
    try:
        return ae.associate("127.0.0.1", port, ae_title="EDGESEG", bind_address=(source, 0))
    except OSError as exc:
        pytest.skip(f"cannot bind the loopback address {source} as a second host: {exc}")


def _rejection_from(source: str, port: int) -> bytes:
    """What the node answers an A-ASSOCIATE-RQ (Verification) sent from ``source`` with: the PDU,
    whole, or as much as came before the connection ended."""
    with contextlib.closing(_connect(port, source)) as sock:
        sock.settimeout(BOUND)
        sock.sendall(_associate_rq(calling="OTHERHOST"))
        return _recv_pdu(sock)


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_host"])
@pytest.mark.parametrize("tool", ["echoscu", "storescu"])
def test_a_peer_past_a_connection_limit_is_told_local_limit_exceeded(running_node, caplog, limit, tool):
    """Past --max-connections or --max-connections-per-host the connection was closed as it was
    accepted: echoscu printed "Association Request Failed ... Peer aborted Association (or never
    connected)", a network error, where a busy node says "rejected transient, local limit
    exceeded" and the modality retries. Now the refused request gets that A-ASSOCIATE-RJ, and one
    log line names the host."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    options = {"max_associations": 2, "max_connections": 2 if limit == "max_connections" else 8,
               "max_connections_per_host": 2}
    files = sorted(SERIES.glob("*.dcm"))
    with running_node(peer_timeout=PEER_TIMEOUT, **options) as node:
        held = _idle(node, 2)
        try:
            assert _wait_for(lambda: node._connections.open_connections() == 2, BOUND)
            done = _echo(node.port) if tool == "echoscu" else _storescu(node.port, files[:1])
        finally:
            for sock in held:
                sock.close()
        freed = _wait_for(lambda: _echo(node.port).returncode == 0, BOUND)
    _assert_rejected_as_busy(done)
    assert node.stats.received == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a connection")]
    assert lines and lines[0].startswith("refused a connection from 127.0.0.1:"), lines
    assert f"--{limit.replace('_', '-')} allows" in lines[0], lines[0]
    assert "association request is rejected (transient, local limit exceeded)" in lines[0], lines[0]
    assert freed, "the node did not take associations again once the held connections closed"


def test_one_host_at_its_default_limit_leaves_the_scanner_a_slot(running_node, caplog):
    """--max-connections-per-host was 8 whatever --max-associations was: with --max-associations 4,
    a host holding 4 connections held every slot, and the scanner's storescu was rejected. By
    default a host now holds at most the association limit less a fifth and at least 2 of it (2
    of 4): those past 2 are refused, its association request rejected as busy, while the
    scanner's series goes through."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    files = sorted(SERIES.glob("*.dcm"))
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=4) as node:
        held = _idle(node, 4, source="127.0.0.2")
        with contextlib.ExitStack() as stack:
            for sock in held:
                stack.enter_context(contextlib.closing(sock))
            assert _wait_for(lambda: node._connections.open_connections("127.0.0.2") == 2, BOUND)
            third = _rejection_from("127.0.0.2", node.port)
            sent = _storescu(node.port, files)
            assert _wait_for(lambda: node.stats.received == len(files), BOUND), node.stats
    # A-ASSOCIATE-RJ (PS3.8 9.3.4): result 2 rejected-transient, source 3 service-provider
    # (presentation), reason 2 local-limit-exceeded
    assert third == bytes([0x03, 0, 0, 0, 0, 4, 0, 0x02, 0x03, 0x02]), (
        f"the host past its limit was answered {third.hex(' ')}; refusals logged: "
        f"{[r.getMessage() for r in caplog.records if 'refused' in r.getMessage()]}")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a connection")]
    assert lines[0].startswith("refused a connection from 127.0.0.2:"), lines
    assert "2 connections from 127.0.0.2 are open, the most --max-connections-per-host allows" in lines[0], lines[0]


def test_the_scanner_at_its_limit_is_told_busy_while_another_host_gets_in(running_node):
    """The other way round: 127.0.0.1 at its limit of 2 connections, its echoscu is rejected as
    busy, and an association from 127.0.0.2 is accepted and answers its C-ECHO meanwhile."""
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=4, max_connections_per_host=2) as node:
        held = _idle(node, 2)
        with contextlib.ExitStack() as stack:
            for sock in held:
                stack.enter_context(contextlib.closing(sock))
            assert _wait_for(lambda: node._connections.open_connections("127.0.0.1") == 2, BOUND)
            refused = _echo(node.port)
            other = _associate_from("127.0.0.2", node.port)
            established = other.is_established
            echoed = other.send_c_echo() if established else None
            if established:
                other.release()
    _assert_rejected_as_busy(refused)
    assert established, "a host within its limit was turned away"
    assert echoed is not None and echoed.Status == 0x0000


@pytest.mark.parametrize("sent,answer", [(b"", b""), (bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]),
                                                      bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 2]))])
def test_a_refused_connection_that_sends_no_request_is_closed_without_a_reject(running_node, sent, answer):
    """A refused connection that sends nothing is closed (within the refusal's few seconds), one
    that sends another PDU than an association request gets an A-ABORT (unexpected PDU), neither an
    A-ASSOCIATE-RJ (PS3.8 answers a request only)."""
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=1, max_connections_per_host=1) as node:
        held = _idle(node, 1)
        with contextlib.closing(held[0]), contextlib.closing(_connect(node.port)) as sock:
            assert _wait_for(lambda: node.stats.refused_connections == 1, BOUND)
            sock.sendall(sent)
            sock.settimeout(BOUND)
            got = b""
            with contextlib.suppress(OSError):
                while part := sock.recv(64):
                    got += part
    assert got == answer


def test_listen_process_logs_the_refused_host_in_one_line(serve_bundle, tmp_path, free_port, wait_port):
    """``edgeseg listen`` as the service runs it: echoscu past --max-connections-per-host prints
    the busy rejection, and the node's stderr has one line naming the host and the limit.

    The slot is held by an established association, not a raw connection: the node counts the
    connection of the echo before it until it has closed its own end, a moment after echoscu has
    its release and exits. A raw connection opened in that moment was the one refused (and closed
    5 s later), every echo after it got in, and the test failed under load."""
    from tests.serve.test_dicom_node_hostile import start_listen, stop_listen

    port = free_port()
    proc = start_listen(serve_bundle, port, tmp_path, "--peer-timeout", str(PEER_TIMEOUT),
                        "--max-associations", "2", "--max-connections-per-host", "1")
    held = []
    try:
        wait_port(port, timeout=60)
        assert _wait_for(lambda: _echo(port).returncode == 0, BOUND)
        # rejected while the echo's connection is still counted: asked again until it is in
        assert _wait_for(lambda: held.append(_associate_from("127.0.0.1", port)) or held[-1].is_established, BOUND)
        done = _echo(port)
    finally:
        if held and held[-1].is_established:
            held[-1].release()
        err = stop_listen(proc)
    _assert_rejected_as_busy(done)
    lines = [line for line in err.splitlines() if "refused a connection from 127.0.0.1:" in line]
    assert lines and "--max-connections-per-host allows; its association request is rejected" in lines[0], err


def test_the_summary_of_a_flood_names_each_host_refused(running_node, caplog):
    """After the first refusal, those of the next 10 s were one line with their count and the last
    one's host: a second host refused meanwhile went unnamed. The line now counts them by host."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=2, max_connections=2,
                      max_connections_per_host=2) as node:
        socks = _idle(node, 2)
        try:
            socks += [_connect(node.port) for _ in range(3)] + [_connect(node.port, "127.0.0.2") for _ in range(5)]
            assert _wait_for(lambda: node.stats.refused_connections == 8, BOUND), node.stats
        finally:
            for sock in socks:
                sock.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert len(lines) == 2 and lines[0].startswith("refused a connection from 127.0.0.1:"), lines
    assert lines[1].startswith("refused 7 more connection(s) in the last 10 s, by host: 127.0.0.2 5, 127.0.0.1 2 ("), lines


def test_one_ae_title_from_two_hosts_is_held_to_its_share_of_the_slots(running_node, caplog):
    """The nodes of a PACS cluster send as one AE title from several addresses: the per-host limit
    let them hold every slot together (4 of 4 here), and a modality was turned away. By default an
    AE title holds as many as one host may (2 of 4): the third association calling as PACS is
    rejected as busy, while the CT's, from the same address as one of them, gets in."""
    caplog.set_level(logging.WARNING, logger="edgeseg.listen")
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=4) as node:
        _settle(node)
        held = [_associate_from(source, node.port, "PACS") for source in ("127.0.0.1", "127.0.0.2")]
        try:
            assert all(assoc.is_established for assoc in held)
            third = subprocess.run(["echoscu", "-aet", "PACS", "-aec", "EDGESEG", "127.0.0.1", str(node.port)],
                                   capture_output=True, text=True, timeout=60)
            modality = _wait_for(lambda: subprocess.run(["echoscu", "-aet", "CT1", "-aec", "EDGESEG", "127.0.0.1",
                                                         str(node.port)], capture_output=True, timeout=60).returncode == 0, BOUND)
        finally:
            for assoc in held:
                assoc.release()
    _assert_rejected_as_busy(third)
    assert modality, "a modality calling as another AE title was turned away"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a connection")]
    assert lines and "2 associations calling as 'PACS' are open, the most --max-associations-per-ae allows" in lines[0], lines


def test_refused_peers_asking_together_are_each_told_busy(running_node):
    """Six echoscu at once past --max-connections-per-host: the one refuser thread answers each
    with the busy rejection (none sees its connection closed unanswered)."""
    with running_node(peer_timeout=PEER_TIMEOUT, max_associations=2, max_connections_per_host=1) as node:
        held = _idle(node, 1)
        try:
            assert _wait_for(lambda: node._connections.open_connections("127.0.0.1") == 1, BOUND)
            peers = [subprocess.Popen(["echoscu", "-aec", "EDGESEG", "127.0.0.1", str(node.port)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
            printed = [p.communicate(timeout=60) for p in peers]
            done = [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(peers, printed)]
        finally:
            held[0].close()
    for each in done:
        _assert_rejected_as_busy(each)
    assert node.stats.refused_connections == 6
