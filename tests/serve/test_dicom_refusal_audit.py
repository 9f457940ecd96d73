"""The audit log of the DICOM node records the connections its connection limits refuse: each
with its peer, the AE titles of its request where the node read it, the limit and how it was
answered; a flood is coalesced into one summary line per period. dcmtk's echoscu is the refused
peer; idle raw sockets (and pynetdicom bound to 127.0.0.2) hold the slots."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import json
import subprocess

import pytest

from tests.serve.test_dicom_node import DCMTK, _wait_for
from tests.serve.test_dicom_node_connections import BOUND, PEER_TIMEOUT, _connect, _idle, _settle
from tests.serve.test_dicom_node_failures import running_node  # noqa: F401 - the fixture
from tests.serve.test_dicom_node_refusals import _assert_rejected_as_busy, _associate_from
from tests.serve.test_http_connections import _read_until_closed

pynetdicom = pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.skipif(not DCMTK, reason="dcmtk (echoscu, storescu, storescp) is not installed: apt-get install dcmtk")


def _echo_as(port: int, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run(["echoscu", "-aet", calling, "-aec", "EDGESEG", "127.0.0.1", str(port)], capture_output=True,
                          text=True, timeout=60)


@contextlib.contextmanager
def _audited_node(running_node, tmp_path, **options):  # noqa: F811 - the fixture, passed on
    """A running node writing its audit log to tmp_path/audit.jsonl; yields the node and a
    function returning the log's lines (read after the node stopped, once the block is left)."""
    from edgeseg.serve.audit import AuditLog

    audit = AuditLog(tmp_path / "audit.jsonl", {"manifest_sha256": "0" * 64})
    try:
        with running_node(peer_timeout=PEER_TIMEOUT, audit=audit, **options) as node:
            yield node
    finally:
        audit.close()


def _lines(tmp_path, event: str) -> list[dict]:
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    return [line for line in lines if line["event"] == event]


@pytest.mark.parametrize("limit", ["--max-connections", "--max-connections-per-host"])
def test_echoscu_past_a_connection_limit_has_an_audit_line(running_node, tmp_path, limit):  # noqa: F811
    """Refused as it was accepted, the connection never reached pynetdicom and left no line in
    the audit log (only the node's log named the host). Now its line names the peer, the AE
    titles of the request the node read and answered, and the limit."""
    options = {"max_associations": 2, "max_connections": 2 if limit == "--max-connections" else 8,
               "max_connections_per_host": 2}
    with _audited_node(running_node, tmp_path, **options) as node:
        held = _idle(node, 2)
        try:
            assert _wait_for(lambda: node._connections.open_connections() == 2, BOUND)
            done = _echo_as(node.port, "CT_ROOM_2")
            # the line is written once the node is done with the connection: the peer has closed it
            assert _wait_for(lambda: _lines(tmp_path, "refused_connection"), BOUND)
        finally:
            for sock in held:
                sock.close()
    _assert_rejected_as_busy(done)
    [line] = _lines(tmp_path, "refused_connection")
    assert line["peer"].startswith("127.0.0.1:") and int(line["peer"].rsplit(":", 1)[1]) > 0
    assert (line["calling_ae"], line["called_ae"], line["limit"], line["outcome"]) == (
        "CT_ROOM_2", "EDGESEG", limit, "rejected")
    assert line["bundle"] == {"manifest_sha256": "0" * 64}
    assert not _lines(tmp_path, "refused_connections")  # one refusal: no summary


def test_an_ae_title_past_its_limit_has_an_audit_line(running_node, tmp_path):  # noqa: F811
    with _audited_node(running_node, tmp_path, max_associations=4) as node:
        _settle(node)
        held = [_associate_from(source, node.port, "PACS") for source in ("127.0.0.1", "127.0.0.2")]
        try:
            assert all(assoc.is_established for assoc in held)
            third = _echo_as(node.port, "PACS")
        finally:
            for assoc in held:
                assoc.release()
    _assert_rejected_as_busy(third)
    [line] = _lines(tmp_path, "refused_connection")
    assert (line["calling_ae"], line["called_ae"], line["limit"], line["outcome"]) == (
        "PACS", "EDGESEG", "--max-associations-per-ae", "rejected")
    # the held associations have their own lines, as before
    assert [a["outcome"] for a in _lines(tmp_path, "association") if a["calling_ae"] == "PACS"] == ["released"] * 2


@pytest.mark.parametrize("sent, outcome", [(b"", "closed"), (bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0]), "aborted")])
def test_a_refused_connection_without_a_request_is_audited_without_ae_titles(running_node, tmp_path, sent,
                                                                             outcome):  # noqa: F811
    with _audited_node(running_node, tmp_path, max_associations=1, max_connections_per_host=1) as node:
        held = _idle(node, 1)
        with contextlib.closing(held[0]), contextlib.closing(_connect(node.port)) as sock:
            assert _wait_for(lambda: node.stats.refused_connections == 1, BOUND)
            sock.sendall(sent)
            with contextlib.suppress(ConnectionResetError):  # a reset ends it too
                _read_until_closed(sock, BOUND)  # the node is done with it: its line is written
    [line] = _lines(tmp_path, "refused_connection")
    assert (line["limit"], line["outcome"]) == ("--max-connections-per-host", outcome)
    assert "calling_ae" not in line and "called_ae" not in line


def test_a_flood_of_refusals_is_coalesced_in_the_audit_log(running_node, tmp_path, monkeypatch):  # noqa: F811
    """25 connections refused within one period: the first REFUSALS_AUDITED (10) have their own
    line and the other 15 one summary line counting them by host, limit and outcome, so a flood
    costs 11 lines a period whatever its rate. (The period is made long here so that a slow
    machine cannot split the flood over two.)"""
    from edgeseg.serve import dicom_refusal_audit

    monkeypatch.setattr(dicom_refusal_audit, "REFUSAL_AUDIT_EVERY", 3600.0)
    with _audited_node(running_node, tmp_path, max_associations=4, max_connections_per_host=1) as node:
        held = _idle(node, 1) + [_connect(node.port, "127.0.0.2")]
        try:
            assert _wait_for(lambda: node._connections.open_connections() == 2, BOUND)
            for source, count in (("127.0.0.1", 8), ("127.0.0.2", 17)):
                for _ in range(count):
                    _connect(node.port, source).close()
            assert _wait_for(lambda: node.stats.refused_connections == 25, BOUND), node.stats
            assert _wait_for(lambda: node._server.refuser.refusing() == 0, BOUND)
        finally:
            for sock in held:
                sock.close()
    own = _lines(tmp_path, "refused_connection")
    [summary] = _lines(tmp_path, "refused_connections")  # written as the node stopped
    assert len(own) == dicom_refusal_audit.REFUSALS_AUDITED == 10
    assert summary["count"] == 15 and sum(summary["by_host"].values()) == 15 and summary["more_hosts"] == 0
    hosts_own = {h: sum(1 for line in own if line["peer"].startswith(f"{h}:")) for h in ("127.0.0.1", "127.0.0.2")}
    assert {h: hosts_own[h] + summary["by_host"].get(h, 0) for h in hosts_own} == {"127.0.0.1": 8, "127.0.0.2": 17}
    assert summary["by_limit"] == {"--max-connections-per-host": 15} and summary["by_outcome"] == {"closed": 15}
    assert all(line["outcome"] == "closed" for line in own)


def _association_request(calling: str, called: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with the two AE titles and no items: the node reads
    its titles and refuses it before anything else of it matters."""
    body = (1).to_bytes(2, "big") + bytes(2) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    return bytes([0x01, 0]) + len(body).to_bytes(4, "big") + body


def test_a_rejection_that_could_not_be_sent_is_audited_as_closed(running_node, tmp_path):  # noqa: F811
    """A request past --max-associations-per-ae from a peer that reset its connection: the node's
    A-ASSOCIATE-RJ never left, yet the line said ``rejected`` (it was written before the send).
    The node's connection count is held while the peer sends its request and resets, so that the
    node answers only after the reset; the outcome is now ``closed``, as for any connection closed
    unanswered."""
    with _audited_node(running_node, tmp_path, max_associations=4) as node:
        _settle(node)
        held = [_associate_from(source, node.port, "PACS") for source in ("127.0.0.1", "127.0.0.2")]
        try:
            assert all(assoc.is_established for assoc in held)
            sock = _connect(node.port)
            assert _wait_for(lambda: node._connections.open_connections() == 3, BOUND)
            with node._connections._lock:
                sock.sendall(_association_request("PACS", "EDGESEG"))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # a reset: the node's answer cannot be sent
            assert _wait_for(lambda: _lines(tmp_path, "refused_connection"), BOUND)
            assert node.stats.refused_connections == 1
        finally:
            for assoc in held:
                assoc.release()
    [line] = _lines(tmp_path, "refused_connection")
    assert (line["calling_ae"], line["called_ae"], line["limit"], line["outcome"]) == (
        "PACS", "EDGESEG", "--max-associations-per-ae", "closed")


def test_an_audit_log_that_takes_no_line_leaves_the_node_accepting(running_node, tmp_path, monkeypatch,
                                                                   caplog):  # noqa: F811
    """--audit-log on a pipe whose reader has gone (a log shipper that died): the line cannot be
    written (EPIPE). Writing a period's summary of refusals on the node's accept thread, an
    OSError the writer let through ended that thread: the node accepted no connection more, and
    echoscu timed out. Now the line is lost, the node's log says so in one line, and echoscu is
    answered."""
    from edgeseg.serve import dicom_refusal_audit
    from edgeseg.serve.audit import AuditLog

    # every refusal goes to the period's summary, written once the node's accept loop comes round
    monkeypatch.setattr(dicom_refusal_audit, "REFUSALS_AUDITED", 0)
    monkeypatch.setattr(dicom_refusal_audit, "REFUSAL_AUDIT_EVERY", 0.0)
    fifo = tmp_path / "audit.pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    audit = AuditLog(fifo)
    os.close(reader)
    try:
        with running_node(peer_timeout=PEER_TIMEOUT, audit=audit, max_associations=1,
                          max_connections_per_host=1) as node:
            held = _idle(node, 1)
            _connect(node.port).close()
            assert _wait_for(lambda: node.stats.refused_connections == 1, BOUND)
            assert _wait_for(lambda: any("its refused_connections line is lost" in r.getMessage()
                                         for r in caplog.records), BOUND)
            held[0].close()
            echo = subprocess.run(["echoscu", "-ta", str(BOUND), "-aec", "EDGESEG", "127.0.0.1", str(node.port)],
                                  capture_output=True, text=True, timeout=60)
            assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        audit.close()
    [lost] = [r.getMessage() for r in caplog.records if "refused_connections line is lost" in r.getMessage()]
    assert lost == f"cannot append to the audit log {fifo}: Broken pipe; its refused_connections line is lost"
