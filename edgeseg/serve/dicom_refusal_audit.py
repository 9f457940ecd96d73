"""The audit log's lines for the connections the DICOM node refuses for its connection limits.

A connection past ``--max-connections`` or ``--max-connections-per-host`` is refused as it is
accepted, and one whose request calls as an AE title past ``--max-associations-per-ae`` once that
request is read (dicom_connections.py): pynetdicom never sees either, so neither has an
``association`` line. Each gets a ``refused_connection`` line instead, written once the node is
done with the connection: ``peer`` (address:port), ``calling_ae`` and ``called_ae`` (where the
peer's request was read), ``limit`` (the option it was refused for) and ``outcome``
(``rejected``: answered with an A-ASSOCIATE-RJ; ``aborted``: it sent another PDU than a request
and was answered with an A-ABORT; ``closed``: it sent no request in its time, it was closed
unanswered because as many refused connections were being answered already, or the answer could
not be sent). The outcome is recorded once the answer was sent or failed.

A flood must not fill the disk: in each period of ``REFUSAL_AUDIT_EVERY`` seconds the first
``REFUSALS_AUDITED`` refusals have their own line, and those past them are counted and written as
one ``refused_connections`` line once the period is over (or the node stops): ``count``,
``seconds`` (the period), ``by_host`` (the ``HOSTS_AUDITED`` hosts refused most, with their
counts), ``more_hosts`` (how many other hosts were refused; past the first ``HOSTS_COUNTED`` of a
period a host's refusals are in ``count`` alone), ``by_limit`` and ``by_outcome``. So
a flood costs at most ``REFUSALS_AUDITED + 1`` lines per period, whatever its rate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgeseg.serve.audit import AuditLog, AuditLogError

log = logging.getLogger("edgeseg.audit")

# The period over which refusals are coalesced, and the refusals in each with a line of their own.
REFUSAL_AUDIT_EVERY = 10.0
REFUSALS_AUDITED = 10
# Hosts named in a period's summary line, those refused most first; the hosts counted per period
# are bounded too (the refusals of one more are in ``count`` alone).
HOSTS_AUDITED = 20
HOSTS_COUNTED = 1000


class RefusalAudit:
    """Writes the ``refused_connection`` and ``refused_connections`` lines of ``audit``:
    :meth:`refused` for each refused connection, :meth:`flush` to write the summary of a period
    that is over (``force``: now, as the node stops)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._lock = threading.Lock()
        self._started: float | None = None  # when the current period began
        self._written = 0  # refusals of the period with a line of their own
        self._count = 0  # those without one, counted below
        self._hosts: dict[str, int] = {}
        self._limits: dict[str, int] = {}
        self._outcomes: dict[str, int] = {}

    def refused(self, address, limit: str, outcome: str, calling_ae: str | None = None,
                called_ae: str | None = None) -> None:
        """One connection from ``address`` refused for ``limit`` (``--max-connections``, ...)
        with ``outcome`` (``rejected``, ``aborted`` or ``closed``)."""
        host = str(address[0])
        with self._lock:
            summary = self._end_period(time.monotonic(), force=False)
            own = self._written < REFUSALS_AUDITED
            if own:
                self._written += 1
            else:
                self._count_one(host, limit, outcome)
        if summary is not None:
            self._record("refused_connections", summary)
        if own:
            self._record("refused_connection", {"peer": f"{host}:{address[1]}", "calling_ae": calling_ae,
                                                "called_ae": called_ae, "limit": limit, "outcome": outcome})

    def flush(self, force: bool = False) -> None:
        """Write the summary line of the period, once it is over (``force``: now)."""
        with self._lock:
            summary = self._end_period(time.monotonic(), force)
        if summary is not None:
            self._record("refused_connections", summary)

    def _count_one(self, host: str, limit: str, outcome: str) -> None:
        self._count += 1
        if host in self._hosts or len(self._hosts) < HOSTS_COUNTED:
            self._hosts[host] = self._hosts.get(host, 0) + 1
        self._limits[limit] = self._limits.get(limit, 0) + 1
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def _end_period(self, now: float, force: bool) -> dict | None:
        """Under the lock: start a new period if the current one is over (or ``force``), and
        return the summary line of the one ended, if any refusal of it was only counted."""
        if self._started is None:
            self._started = now
            return None
        if not force and now - self._started < REFUSAL_AUDIT_EVERY:
            return None
        summary = None
        if self._count:
            named = sorted(self._hosts.items(), key=lambda item: (-item[1], item[0]))
            summary = {"count": self._count, "seconds": round(now - self._started, 3),
                       "by_host": dict(named[:HOSTS_AUDITED]),
                       "more_hosts": max(0, len(named) - HOSTS_AUDITED),
                       "by_limit": dict(self._limits), "by_outcome": dict(self._outcomes)}
        self._started, self._written, self._count = now, 0, 0
        self._hosts, self._limits, self._outcomes = {}, {}, {}
        return summary

    def _record(self, event: str, fields: dict) -> None:
        try:
            self.audit.record(event, **fields)
        except AuditLogError as exc:  # the node goes on; its log says what the audit log lacks
            log.error("%s; its %s line is lost", exc, event)


def refusal_recorder(audit: RefusalAudit | None, address, limit: str) -> Callable[..., None]:
    """``done(outcome, calling_ae=None, called_ae=None)``, recording the refusal of the connection
    from ``address`` for ``limit`` once the node is done with it (nothing without an audit log)."""
    def done(outcome: str, calling_ae: str | None = None, called_ae: str | None = None) -> None:
        if audit is not None:
            audit.refused(address, limit, outcome, calling_ae, called_ae)
    return done
