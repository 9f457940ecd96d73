"""Bounds on the DICOM node's open TCP connections: in all, and from any one peer address.

pynetdicom gives every accepted connection its threads (the association's and its reader's)
before the peer has sent a byte, and counts it against ``maximum_associations`` from then on; it
only rejects a request past that limit once it has read it. A host opening connections faster
than ``--peer-timeout`` closes them therefore held threads, memory and every association slot.
:class:`ConnectionLimit` counts connections as the listening socket accepts them, before any
thread is started: one past ``--max-connections``, or past ``--max-connections-per-host`` from
its address, is refused there (socketserver's ``verify_request``, which pynetdicom's server
inherits) and handed to the node's :class:`~edgeseg.serve.dicom_refusal.AssociationRefuser`,
which answers its association request with an A-ASSOCIATE-RJ (rejected-transient,
local-limit-exceeded) as pynetdicom answers one past ``maximum_associations``; only when that
one is answering as many as it may is the connection closed unanswered. A connection leaves the
count the moment its socket is closed. Refusals are logged at most once per ``REFUSAL_LOG_EVERY``
seconds, with the count of those not logged by host, so a flood does not flood the log; with an
audit log, each refusal is also recorded there, coalesced as a flood goes on
(dicom_refusal_audit.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgeseg.serve.dicom_refusal import REFUSAL_WAIT, AssociationRefuser, ae_titles, reject_pdu
from edgeseg.serve.dicom_refusal_audit import RefusalAudit, refusal_recorder

log = logging.getLogger("edgeseg.listen")

# How often a refused connection is logged at most: each line says how many were refused since
# the one before, and from which hosts, so a flood costs one line per period.
REFUSAL_LOG_EVERY = 10.0
# Hosts named in that line, those refused most first; the hosts counted per period are bounded too
HOSTS_NAMED = 5
HOSTS_COUNTED = 1000


class ConnectionLimit:
    """Open connections in all and per peer address; :meth:`admit` takes one or says why not,
    :meth:`admit_request` counts its association request against its calling AE title or answers
    it with an A-ASSOCIATE-RJ, :meth:`release` gives both back (once, however often the socket is
    closed). With ``audit`` (an AuditLog), each refusal is recorded there too."""

    def __init__(self, total: int, per_host: int, stats, per_ae: int | None = None, audit=None) -> None:
        self.total, self.per_host, self.per_ae = total, per_host, per_ae
        self.audit = None if audit is None else RefusalAudit(audit)
        self._stats = stats  # NodeStats: refused_connections counts every refusal, logged or not
        self._open: dict[int, str] = {}  # id of each admitted socket -> its peer address
        self._per_host: dict[str, int] = {}
        self._ae_of: dict[int, str] = {}  # id of each admitted socket with a request -> its calling AE title
        self._per_ae: dict[str, int] = {}
        self._lock = threading.Lock()
        self._unlogged = 0
        self._unlogged_hosts: dict[str, int] = {}  # refusals not logged yet, per host
        self._logged_at: float | None = None
        self._last_refusal = ""

    def open_connections(self, host: str | None = None) -> int:
        with self._lock:
            return len(self._open) if host is None else self._per_host.get(host, 0)

    def admit(self, sock, address) -> tuple[str, str] | None:
        """Count ``sock`` (just accepted from ``address``) as open (None), or say why it is
        refused: the limit's option and the reason."""
        host = str(address[0])
        with self._lock:
            if len(self._open) >= self.total:
                limit = "--max-connections"
                reason = f"{len(self._open)} connections are open, the most {limit} allows"
            elif self._per_host.get(host, 0) >= self.per_host:
                limit = "--max-connections-per-host"
                reason = f"{self._per_host[host]} connections from {host} are open, the most {limit} allows"
            else:
                self._open[id(sock)] = host
                self._per_host[host] = self._per_host.get(host, 0) + 1
                return None
            self._stats.refused_connections += 1
            return limit, reason

    def recorder(self, address, limit: str):
        """``done(outcome, calling_ae=None, called_ae=None)``, recording in the audit log the
        refusal of the connection from ``address`` for ``limit`` once it is done with."""
        return refusal_recorder(self.audit, address, limit)

    def refused(self, address, reason: str, answered: bool) -> None:
        """Log a refusal (at most one line per period), ``answered`` by an A-ASSOCIATE-RJ or not."""
        host = str(address[0])
        how = ("its association request is rejected (transient, local limit exceeded)" if answered else
               "it was closed unanswered: as many refused connections are being answered already")
        with self._lock:
            self._last_refusal = f"the last from {host}:{address[1]}: {reason}"
            if self._logged_at is not None and time.monotonic() - self._logged_at < REFUSAL_LOG_EVERY:
                self._unlogged += 1
                if host in self._unlogged_hosts or len(self._unlogged_hosts) < HOSTS_COUNTED:
                    self._unlogged_hosts[host] = self._unlogged_hosts.get(host, 0) + 1
                return
            self._logged_at, self._unlogged = time.monotonic(), 0
        log.warning("refused a connection from %s:%s: %s; %s", host, address[1], reason, how)

    def admit_request(self, sock, address, pdu: bytes) -> tuple[bytes, Callable[[bool], None]] | None:
        """Count the association request ``pdu`` of ``sock`` against its calling AE title (None),
        or log why not and return the A-ASSOCIATE-RJ to answer it with and what to call with
        whether it was sent (the audit log's outcome: rejected, or closed where it never left)."""
        # PS3.8 9.3.2: the PDU header (6 bytes), protocol version, reserved, called AE title (16)
        calling, called = ae_titles(pdu)
        with self._lock:
            held = self._per_ae.get(calling, 0)
            if self.per_ae is None or held < self.per_ae:
                self._ae_of[id(sock)] = calling
                self._per_ae[calling] = held + 1
                return None
            self._stats.refused_connections += 1
        self.refused(address, f"{held} associations calling as {calling!r} are open, the most "
                              f"--max-associations-per-ae allows", answered=True)
        done = self.recorder(address, "--max-associations-per-ae")
        return reject_pdu(), lambda sent: done("rejected" if sent else "closed", calling, called)

    def release(self, sock) -> None:
        with self._lock:
            host = self._open.pop(id(sock), None)
            if host is not None:
                self._per_host[host] -= 1
                if not self._per_host[host]:
                    del self._per_host[host]
            calling = self._ae_of.pop(id(sock), None)
            if calling is not None:
                self._per_ae[calling] -= 1
                if not self._per_ae[calling]:
                    del self._per_ae[calling]

    def flush(self, force: bool = False) -> None:
        """Log the refusals not logged yet, once their period is over (``force``: now), and write
        the audit log's summary of a period of refusals that is over."""
        if self.audit is not None:
            self.audit.flush(force)
        with self._lock:
            if not self._unlogged or not (force or time.monotonic() - self._logged_at >= REFUSAL_LOG_EVERY):
                return
            count, self._unlogged = self._unlogged, 0
            hosts, self._unlogged_hosts = self._unlogged_hosts, {}
            self._logged_at = time.monotonic()
            last = self._last_refusal
        named = sorted(hosts.items(), key=lambda item: (-item[1], item[0]))
        by_host = ", ".join(f"{host} {refused}" for host, refused in named[:HOSTS_NAMED])
        if len(named) > HOSTS_NAMED:
            by_host += f" and {len(named) - HOSTS_NAMED} more host(s)"
        log.warning("refused %d more connection(s) in the last %g s, by host: %s (%s)", count, REFUSAL_LOG_EVERY,
                    by_host, last)


def limited_server_class(limit: ConnectionLimit, refusal_wait: float = REFUSAL_WAIT,
                         binding: Callable[[object], None] = lambda server: None):
    """pynetdicom's threaded server, admitting each accepted connection through ``limit`` before
    a thread is started for it, releasing it when its socket is closed here, and answering one
    refused with an A-ASSOCIATE-RJ (each given ``refusal_wait`` seconds for that). ``binding`` is
    called with the server just before its socket is bound: an interrupt that ends the start
    anywhere from there, inside the constructor too, leaves the stop a server to close."""
    from pynetdicom.transport import ThreadedAssociationServer

    class LimitedAssociationServer(ThreadedAssociationServer):
        # connections wait here to be accepted (and, past the limits, refused): socketserver's 5
        # made a burst of them leave a scanner's connection unanswered in the kernel
        request_queue_size = 128

        # till the constructor makes them, after the bind (an interrupt may come first)
        refuser: AssociationRefuser | None = None
        _handed_over = None

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)  # binds: a port in use starts no thread
            self.refuser = AssociationRefuser(wait=refusal_wait)
            self.refuser.start()

        def server_bind(self) -> None:
            binding(self)
            super().server_bind()

        def verify_request(self, request, client_address) -> bool:
            refused = limit.admit(request, client_address)
            if refused is None:
                return True
            option, reason = refused
            done = limit.recorder(client_address, option)
            answered = self.refuser.take(request, done)
            if answered:
                self._handed_over = request  # socketserver shuts a refused request down next
            else:
                done("closed")
            limit.refused(client_address, reason, answered)
            return False

        def shutdown_request(self, request) -> None:
            if request is self._handed_over:  # the refuser answers it and closes it
                self._handed_over = None
                return
            super().shutdown_request(request)

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

        def server_close(self) -> None:
            try:
                super().server_close()
            finally:
                if self.refuser is not None:
                    self.refuser.close()

    return LimitedAssociationServer
