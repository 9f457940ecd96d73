"""Answering a connection refused for the node's connection limits with an A-ASSOCIATE-RJ.

A connection past ``--max-connections`` or ``--max-connections-per-host`` is refused as it is
accepted, before pynetdicom spends threads on it (dicom_connections.py). Closed there and then,
the peer saw its connection reset or closed, and a modality logs a network error rather than
"busy, retry". :class:`AssociationRefuser` instead takes each such connection into one thread of
its own and answers it as PS3.8 has an acceptor turn down a request it cannot take: it reads the
A-ASSOCIATE-RQ (its body discarded as it comes, nothing held), sends an A-ASSOCIATE-RJ with result
rejected-transient, source service-provider (presentation), reason local-limit-exceeded (what
pynetdicom sends past ``maximum_associations``, and what dcmtk's tools print as such), and waits
for the peer to close its end (PS3.8 state Sta13) before closing its own. What it spends is bounded:
at most ``at_once`` connections are being answered together (one past that is closed at once, as
before), each for at most ``wait`` seconds from its accept, all on one thread and a selector.
Once done with a connection it tells the caller how (rejected, aborted or closed) and the AE titles
of its request, where it read them (for the audit log: dicom_refusal_audit.py).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time

from edgeseg.serve.dicom_peer_bound import OTHER_PDU_LIMIT, abort_pdu

log = logging.getLogger("edgeseg.listen")

A_ASSOCIATE_RQ = 0x01
# PS3.8 9.3.4, Table 9-21: result 2 rejected-transient; source 3 DICOM UL service-provider
# (presentation related function); its reason 2 local-limit-exceeded
RESULT_TRANSIENT, SOURCE_PRESENTATION, REASON_LOCAL_LIMIT = 0x02, 0x03, 0x02
# PS3.8 9.3.8: A-ABORT from the service provider (source 2), reasons unexpected PDU and invalid
# PDU parameter value
ABORT_SOURCE_PROVIDER, ABORT_UNEXPECTED_PDU, ABORT_INVALID_PARAMETER = 2, 2, 6
# Connections being answered at once; one past them is closed unanswered (a flood must not hold
# sockets without bound). A modality sends its request as it connects, so few are ever waiting.
REFUSING_AT_ONCE = 64
# Seconds a refused connection has, from its accept, to send its request and close after the
# answer (at most --peer-timeout); the refused peer holds no association slot meanwhile.
REFUSAL_WAIT = 5.0
# PS3.8 9.3.2: an A-ASSOCIATE-RQ's called AE title is at bytes 10-25, its calling AE title at 26-41
CALLED_AE, CALLING_AE = slice(10, 26), slice(26, 42)


def ae_titles(head: bytes) -> tuple[str | None, str | None]:
    """The calling and called AE titles of an A-ASSOCIATE-RQ whose first bytes are ``head``
    (None where it is shorter than the title's end)."""
    def title(where: slice) -> str | None:
        return head[where].decode("ascii", "replace").strip(" \0") if len(head) >= where.stop else None
    return title(CALLING_AE), title(CALLED_AE)


def reject_pdu(result: int = RESULT_TRANSIENT, source: int = SOURCE_PRESENTATION,
               reason: int = REASON_LOCAL_LIMIT) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4): type 3, length 4, reserved, result, source, reason."""
    return bytes([0x03, 0, 0, 0, 0, 4, 0, result, source, reason])


class _Refusal:
    """One connection being answered: the request's header read so far, then the body bytes left
    to read (None before the header is whole), the request's first bytes (its AE titles), then
    what was answered (``outcome``: rejected, aborted, or closed for neither)."""

    def __init__(self, sock, deadline: float, done) -> None:
        self.sock, self.deadline, self.done = sock, deadline, done
        self.header = b""
        self.head = b""
        self.left: int | None = None
        self.answered = False
        self.outcome = "closed"


class AssociationRefuser:
    """One thread answering refused connections; :meth:`take` hands it one (False when
    ``at_once`` are being answered: the caller closes it), :meth:`close` ends it and them. The
    ``done`` given with a connection is called once it is closed here, with the outcome and
    the request's calling and called AE titles (None where not read)."""

    def __init__(self, wait: float = REFUSAL_WAIT, at_once: int = REFUSING_AT_ONCE) -> None:
        self.wait, self.at_once = float(wait), at_once
        self.answered = 0  # connections sent an A-ASSOCIATE-RJ
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._incoming: list = []
        self._open: dict[int, _Refusal] = {}
        self._count = 0  # taken and not closed yet, those not registered yet included
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="edgeseg-listen-refuse", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def take(self, sock, done=None) -> bool:
        """Answer ``sock`` (just accepted and refused) with an A-ASSOCIATE-RJ, and close it;
        ``done(outcome, calling_ae, called_ae)`` is called then."""
        with self._lock:
            if self._closed or self._count >= self.at_once:
                return False
            self._count += 1
            self._incoming.append((sock, done))
        self._wake()
        return True

    def refusing(self) -> int:
        """Connections being answered now."""
        with self._lock:
            return self._count

    def close(self) -> None:
        """Stop answering; every connection still being answered is closed."""
        with self._lock:
            self._closed = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for sock, done in self._incoming:
            sock.close()
            _tell(done, "closed", b"")
        for refusal in list(self._open.values()):
            refusal.sock.close()
            _tell(refusal.done, refusal.outcome, refusal.head)
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the thread is woken already
            self._wake_writer.send(b"\0")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                incoming, self._incoming = self._incoming, []
            now = time.monotonic()
            for sock, done in incoming:
                self._register(sock, now + self.wait, done)
            due = min((refusal.deadline for refusal in self._open.values()), default=now + 60)
            for key, _ in self._selector.select(timeout=max(0.0, due - now)):
                if key.fileobj is self._wake_reader:
                    with contextlib.suppress(OSError):
                        self._wake_reader.recv(4096)
                elif key.fd in self._open:
                    self._step(self._open[key.fd])
            now = time.monotonic()
            for refusal in [r for r in self._open.values() if r.deadline <= now]:
                self._finish(refusal)

    def _register(self, sock, deadline: float, done) -> None:
        try:
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        except (OSError, ValueError):  # gone already
            sock.close()
            with self._lock:
                self._count -= 1
            _tell(done, "closed", b"")
            return
        self._open[sock.fileno()] = _Refusal(sock, deadline, done)

    def _step(self, refusal: _Refusal) -> None:
        """Read what the peer sent; answer once its request is whole; close once it has closed."""
        sock = refusal.sock
        want = 6 - len(refusal.header) if refusal.left is None else max(1, min(refusal.left, 1 << 16))
        try:
            data = sock.recv(want)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the peer closed (after the answer, as it should; or gave up before)
            self._finish(refusal)
            return
        if refusal.answered:
            return  # nothing is due after the answer: discarded until the peer closes
        if refusal.left is None:
            refusal.header += data
            if len(refusal.header) < 6:
                return
            pdu_type, length = refusal.header[0], int.from_bytes(refusal.header[2:6], "big")
            if pdu_type != A_ASSOCIATE_RQ or length > OTHER_PDU_LIMIT:
                code = ABORT_UNEXPECTED_PDU if pdu_type != A_ASSOCIATE_RQ else ABORT_INVALID_PARAMETER
                if self._send(sock, abort_pdu(ABORT_SOURCE_PROVIDER, code)):
                    refusal.outcome = "aborted"
                self._finish(refusal)
                return
            refusal.left = length
            refusal.head = refusal.header
        else:
            refusal.left -= len(data)
            if len(refusal.head) < CALLING_AE.stop:  # the AE titles, for the audit log; the rest is discarded
                refusal.head += data[:CALLING_AE.stop - len(refusal.head)]
        if refusal.left == 0:
            refusal.answered = self._send(sock, reject_pdu())
            if not refusal.answered:
                self._finish(refusal)
                return
            self.answered += 1
            refusal.outcome = "rejected"

    @staticmethod
    def _send(sock, pdu: bytes) -> bool:
        # a few bytes into the empty send buffer of a fresh connection: they go at once or never
        try:
            return sock.send(pdu) == len(pdu)
        except OSError:
            return False

    def _finish(self, refusal: _Refusal) -> None:
        self._open.pop(refusal.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(refusal.sock)
        refusal.sock.close()
        with self._lock:
            self._count -= 1
        _tell(refusal.done, refusal.outcome, refusal.head)


def _tell(done, outcome: str, head: bytes) -> None:
    """Call ``done`` (if any) with how a refused connection ended; a failure of it is logged, and
    the refusing thread goes on."""
    if done is None:
        return
    try:
        done(outcome, *ae_titles(head))
    except Exception:
        log.exception("recording a refused connection failed")
