"""A TCP relay between a DICOM peer and the node that holds back the node's answers on request
(a busy network or a store-and-forward router pausing in the middle of an association), or
changes them on their way (a peer that does not keep to the standard)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class PausingRelay:
    """Listens on ``port`` and relays each connection to 127.0.0.1:``target``. The node's PDUs go
    back to the peer one by one; PDU number ``hold_at`` (counted from 1 on each connection: 1 is
    the A-ASSOCIATE-AC, 2 the answer to the first C-STORE) waits until :attr:`gate` is set, so the
    peer, waiting for that answer, sends nothing meanwhile. ``hold_at`` None holds none back; each
    PDU goes back as ``change(pdu)`` returns it while ``change`` is set (the attribute)."""

    def __init__(self, port: int, target: int, hold_at: int | None = 2, change=None) -> None:
        assert hold_at is None or hold_at >= 1, "PDUs are counted from 1 (the A-ASSOCIATE-AC)"
        self.target, self.hold_at, self.gate, self.change = target, hold_at, threading.Event(), change
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = port
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                peer, _ = self._listener.accept()
            except OSError:  # closed
                return
            node = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(peer, node), daemon=True).start()
            threading.Thread(target=self._answers, args=(node, peer), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):  # either end gone: the relay of this connection ends
            while data := source.recv(65536):
                sink.sendall(data)
        _end(sink)

    def _answers(self, node: socket.socket, peer: socket.socket) -> None:
        count = 0
        with contextlib.suppress(OSError):
            while header := _read(node, 6):
                body = _read(node, struct.unpack(">I", header[2:])[0])
                count += 1
                if count == self.hold_at:
                    self.gate.wait(120)
                change = self.change
                peer.sendall(header + body if change is None else change(header + body))
        _end(peer)

    def close(self) -> None:
        """Open the gate and stop listening. On Linux close() alone does not wake the thread
        blocked in accept(); shutdown() does, so no thread is left behind."""
        self.gate.set()
        with contextlib.suppress(OSError):  # not connected: some systems refuse shutdown on a listener
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def _end(sock: socket.socket) -> None:
    """End the connection of ``sock`` for both ends. close() alone leaves it open while the thread
    relaying the other way is in recv() on it: a single-process peer (dcmtk's storescp) then waits
    on it for good and takes no next association."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
