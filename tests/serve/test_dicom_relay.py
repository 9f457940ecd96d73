"""The pausing relay of tests/serve/dicom_relay.py does what the slow-series tests rely on: it
passes the peer's bytes and the node's PDUs through unchanged, and holds back exactly the node's
PDU number ``hold_at`` of each connection until its gate opens."""

from __future__ import annotations

import socket
import struct
import threading

from tests.ports import reserved_port
from tests.serve.dicom_relay import PausingRelay, _read


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def test_the_relay_passes_bytes_through_and_holds_the_chosen_pdu_until_its_gate_opens():
    node = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []
    pdus = [_pdu(2, b"associate-ac"), _pdu(4, b"store-rsp" * 5000), _pdu(6, b"release-rp")]

    def serve() -> None:
        connection, _ = node.accept()
        with connection:
            received.append(_read(connection, 11))
            for pdu in pdus:
                connection.sendall(pdu)

    threading.Thread(target=serve, daemon=True).start()
    relay = PausingRelay(reserved_port(), node.getsockname()[1], hold_at=2)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=60) as peer:
            peer.sendall(b"peer-hello!")
            assert _read(peer, len(pdus[0])) == pdus[0]  # the first PDU is not held
            peer.settimeout(0.5)
            try:
                early = peer.recv(1)
            except TimeoutError:
                early = b""
            assert early == b""  # the second waits for the gate (whatever the machine's speed)
            relay.gate.set()
            peer.settimeout(60)
            assert _read(peer, len(pdus[1]) + len(pdus[2])) == pdus[1] + pdus[2]
        assert received == [b"peer-hello!"]
    finally:
        relay.close()
        node.close()


def test_closing_the_relay_ends_its_accepting_thread():
    """close() wakes the thread blocked in accept(): each test using the relay would otherwise
    leave one behind, blocked until the process ends."""
    relay = PausingRelay(reserved_port(), reserved_port())
    assert relay.accepting.is_alive()
    relay.close()
    relay.accepting.join(60)  # ends at once; the bound only keeps a failure from hanging the run
    assert not relay.accepting.is_alive()
