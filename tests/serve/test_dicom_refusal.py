"""The refuser the DICOM node hands refused connections to, on real socket pairs: the bytes it
answers with are PS3.8's, written out here by hand, and it answers no more at once than it may."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from edgeseg.serve.dicom_refusal import AssociationRefuser

# PS3.8 9.3.4: PDU type 03H, reserved, PDU length 4, reserved, result 2 (rejected-transient),
# source 3 (service-provider, presentation related), reason 2 (local-limit-exceeded)
A_ASSOCIATE_RJ_BUSY = bytes.fromhex("03 00 00000004 00 02 03 02")
# PS3.8 9.3.8: PDU type 07H, reserved, length 4, two reserved, source 2 (service-provider), reason
A_ABORT_INVALID_PARAMETER = bytes.fromhex("07 00 00000004 00 00 02 06")


def _request(body_length: int) -> bytes:
    """An A-ASSOCIATE-RQ's header and a body of zeros: the refuser reads a request whole, and no
    further."""
    return bytes([0x01, 0]) + body_length.to_bytes(4, "big") + bytes(body_length)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    got = b""
    with contextlib.suppress(OSError):
        while part := sock.recv(64):
            got += part
    return got


@pytest.fixture
def refuser():
    started = AssociationRefuser(wait=20, at_once=1)
    started.start()
    yield started
    started.close()


def test_a_whole_request_is_answered_busy_and_the_connection_closed_after_the_peer(refuser):
    node_end, peer = socket.socketpair()
    with contextlib.closing(peer):
        assert refuser.take(node_end)
        peer.sendall(_request(300_000)[:100])  # a request in pieces: no answer before its end
        peer.settimeout(0.5)
        with pytest.raises(TimeoutError):
            peer.recv(64)
        peer.sendall(_request(300_000)[100:])
        peer.settimeout(20)
        assert peer.recv(64) == A_ASSOCIATE_RJ_BUSY
        peer.shutdown(socket.SHUT_WR)  # as a requestor closes on the rejection
        assert _answer(peer) == b""
    assert refuser.answered == 1
    deadline = time.monotonic() + 20
    while refuser.refusing() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert refuser.refusing() == 0, "the refuser kept a connection the peer had closed"


def test_a_request_over_the_pdu_bound_is_aborted_unread(refuser):
    node_end, peer = socket.socketpair()
    with contextlib.closing(peer):
        assert refuser.take(node_end)
        peer.sendall(bytes([0x01, 0]) + (2 << 20).to_bytes(4, "big"))
        assert _answer(peer) == A_ABORT_INVALID_PARAMETER
    assert refuser.answered == 0


def test_one_past_the_refusals_at_once_is_left_to_the_caller(refuser):
    first, first_peer = socket.socketpair()
    second, second_peer = socket.socketpair()
    with contextlib.closing(first_peer), contextlib.closing(second), contextlib.closing(second_peer):
        assert refuser.take(first)
        assert not refuser.take(second)  # the server closes it unanswered, and logs so
        assert refuser.refusing() == 1

