"""Bounds on the DICOM node's open TCP connections: in all, and from any one peer address.

pynetdicom gives every accepted connection its threads (the association's and its reader's)
before the peer has sent a byte, and counts it against ``maximum_associations`` from then on; it
only rejects a request past that limit once it has read it. A host opening connections faster
than ``--peer-timeout`` closes them therefore held threads, memory and every association slot.
:class:`ConnectionLimit` counts connections as the listening socket accepts them, before any
thread is started: one past ``--max-connections``, or past ``--max-connections-per-host`` from
its address, is closed at once (socketserver's ``verify_request``, which pynetdicom's server
inherits), and a connection leaves the count the moment its socket is closed. Refusals are
logged at most once per ``REFUSAL_LOG_EVERY`` seconds, with the count of those not logged, so a
flood does not flood the log.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("edgeseg.listen")

# How often a refused connection is logged at most: each line says how many were refused since
# the one before, so a flood costs one line per period.
REFUSAL_LOG_EVERY = 10.0


class ConnectionLimit:
    """Open connections in all and per peer address; :meth:`admit` takes one or says why not,
    :meth:`release` gives it back (once, however often the socket is closed)."""

    def __init__(self, total: int, per_host: int, stats) -> None:
        self.total, self.per_host = total, per_host
        self._stats = stats  # NodeStats: refused_connections counts every refusal, logged or not
        self._open: dict[int, str] = {}  # id of each admitted socket -> its peer address
        self._per_host: dict[str, int] = {}
        self._lock = threading.Lock()
        self._unlogged = 0
        self._logged_at: float | None = None
        self._last_refusal = ""

    def open_connections(self, host: str | None = None) -> int:
        with self._lock:
            return len(self._open) if host is None else self._per_host.get(host, 0)

    def admit(self, sock, address) -> bool:
        """Count ``sock`` (just accepted from ``address``) as open, or log why it is refused."""
        host = str(address[0])
        with self._lock:
            if len(self._open) >= self.total:
                reason = f"{len(self._open)} connections are open, the most --max-connections allows"
            elif self._per_host.get(host, 0) >= self.per_host:
                reason = (f"{self._per_host[host]} connections from {host} are open, the most "
                          f"--max-connections-per-host allows")
            else:
                self._open[id(sock)] = host
                self._per_host[host] = self._per_host.get(host, 0) + 1
                return True
            self._stats.refused_connections += 1
            self._last_refusal = f"the last from {host}:{address[1]}: {reason}"
            if self._logged_at is not None and time.monotonic() - self._logged_at < REFUSAL_LOG_EVERY:
                self._unlogged += 1
                return False
            self._logged_at, self._unlogged = time.monotonic(), 0
        log.warning("refused a connection from %s:%s: %s; it was closed at once", host, address[1], reason)
        return False

    def release(self, sock) -> None:
        with self._lock:
            host = self._open.pop(id(sock), None)
            if host is not None:
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]

    def flush(self, force: bool = False) -> None:
        """Log the refusals not logged yet, once their period is over (``force``: now)."""
        with self._lock:
            if not self._unlogged or not (force or time.monotonic() - self._logged_at >= REFUSAL_LOG_EVERY):
                return
            count, self._unlogged = self._unlogged, 0
            self._logged_at = time.monotonic()
            last = self._last_refusal
        log.warning("refused %d more connection(s) in the last %g s (%s)", count, REFUSAL_LOG_EVERY, last)


def limited_server_class(limit: ConnectionLimit):
    """pynetdicom's threaded server, admitting each accepted connection through ``limit`` before
    a thread is started for it, and releasing it when its socket is closed here."""
    from pynetdicom.transport import ThreadedAssociationServer

    class LimitedAssociationServer(ThreadedAssociationServer):
        # connections wait here to be accepted (and, past the limits, closed): socketserver's 5
        # made a burst of them leave a scanner's connection unanswered in the kernel
        request_queue_size = 128

        def verify_request(self, request, client_address) -> bool:
            return limit.admit(request, client_address)

        def close_request(self, request) -> None:
            # pynetdicom closes an association's socket itself (through the wrapper, which releases
            # it); this is the path of a connection whose thread could not be started
            try:
                super().close_request(request)
            finally:
                limit.release(getattr(request, "raw_socket", request))

        def service_actions(self) -> None:
            super().service_actions()
            limit.flush()

    return LimitedAssociationServer
