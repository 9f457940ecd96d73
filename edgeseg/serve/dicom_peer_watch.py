"""A time limit on each DICOM peer: a connection on which the peer keeps the node waiting is cut.

pynetdicom's accepted sockets block without a timeout, and its reader waits for the rest of a PDU
it has begun for as long as the peer takes: a peer that sends part of a PDU (of its association
request, or of any later one) and then nothing holds the association's threads, and its slot of
the ``maximum_associations``, for good; its ACSE and network timeouts cannot end that connection,
since the association waits for that very reader to stop. Its network timeout also counts the
node's own time in its C-STORE handler against the peer. So the node runs its own clock on every
connection (dicom_peer_bound.py keeps it: the time since the peer's last whole PDU or the node's
last answer, held while the node works for the peer), and :class:`PeerWatch` cuts a connection
whose peer has kept it waiting past the timeout: an A-ABORT where one can go, then a shutdown that
wakes the thread reading it; pynetdicom then sees the connection end and frees the association.

A connection that ends before its association request (the peer closed it, or the node cut or
refused it) is another wait: pynetdicom's association thread waits for that request for its ACSE
timeout whatever became of the connection, holding its association slot. :meth:`PeerWatch.closed`
hands that thread the end of its wait at once, as its own timeout would.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable

from edgeseg.serve.dicom_peer_bound import PduBoundSocket


class PeerWatch:
    """Cuts each watched connection whose peer has kept the node waiting over ``timeout``
    seconds; ``timed_out(address, what)`` is called for each, with what the peer did last."""

    def __init__(self, timeout: float, timed_out: Callable[[tuple, str], None]) -> None:
        self.timeout = float(timeout)
        self._timed_out = timed_out
        self._conns: set[PduBoundSocket] = set()
        # connections cut as they were added (the stop had begun): their associations are still
        # paired with them, so that their end hands the wait for a request its None (closed()),
        # and those associations are known, so that the stop aborts none of them (requested())
        self._cut_on_add: set[PduBoundSocket] = set()
        self._cut_assocs = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # a quarter of the timeout between looks: a peer is cut within 1.25 timeouts
        self._every = min(1.0, self.timeout / 4)
        self._thread = threading.Thread(target=self._run, name="edgeseg-listen-peers", daemon=True)
        self._conn_of = weakref.WeakKeyDictionary()  # association -> its connection, while it is open

    def start(self) -> None:
        self._thread.start()

    def add(self, conn: PduBoundSocket) -> None:
        """Watch ``conn``; once :meth:`close` has begun, cut it instead (the connection was
        accepted as the node stopped listening: no one else would end it)."""
        with self._lock:
            if not self._stop.is_set():
                self._conns.add(conn)
                return
            self._cut_on_add.add(conn)
        conn.cut()

    def busy_while(self, handler: Callable):
        """``handler`` (a pynetdicom event handler) with its peer's clock held while it runs: the
        node's own time on an image (decoding, writing it) is not the peer's."""
        def held(event):
            requestor = event.assoc.requestor
            conns = self._conns_of((str(requestor.address), int(requestor.port)))
            for conn in conns:
                conn.busy()
            try:
                return handler(event)
            finally:
                for conn in conns:
                    conn.done()
        return held

    def opened(self, event) -> None:
        """pynetdicom's EVT_CONN_OPEN: pair the association with its connection."""
        address = (str(event.address[0]), int(event.address[1]))
        for conn in self._conns_of(address):
            with self._lock:
                self._conn_of[event.assoc] = conn
                if conn in self._cut_on_add:
                    self._cut_assocs.add(event.assoc)

    def closed(self, event) -> None:
        """pynetdicom's EVT_CONN_CLOSE: a connection that ended before its peer's first whole PDU
        (the association request) has no request coming; its association thread, waiting for one
        for the ACSE timeout, is handed what that timeout gives it (None: it ends the association).
        pynetdicom's own timeout path then frees the slot, up to the timeout earlier."""
        with self._lock:
            conn = self._conn_of.pop(event.assoc, None)
            self._cut_on_add.discard(conn)
        if conn is not None and not conn.requested and event.assoc.is_acceptor:
            event.assoc.dul.to_user_queue.put(None)

    def requested(self, assoc) -> bool:
        """Whether the association's peer has sent its request (or its connection is not known
        here): pynetdicom refuses an A-ABORT on an association still waiting for one, with a
        traceback from its reader thread."""
        with self._lock:
            if assoc in self._cut_assocs:  # its connection was cut before it was read at all
                return False
            conn = self._conn_of.get(assoc)
        return conn is None or conn.requested

    def _conns_of(self, address: tuple) -> list[PduBoundSocket]:
        with self._lock:
            return [conn for conn in self._conns | self._cut_on_add
                    if (str(conn.address[0]), int(conn.address[1])) == address]

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            now = time.monotonic()
            with self._lock:
                conns = list(self._conns)
            for conn in conns:
                if conn.fileno() == -1:  # closed by pynetdicom: the association is over
                    self._forget(conn)
                    continue
                waiting = conn.waiting(now)
                if waiting is not None and waiting[0] > self.timeout:
                    self._forget(conn)
                    self._timed_out(conn.address, waiting[1])  # first: whoever sees the end sees it counted
                    conn.cut()

    def _forget(self, conn: PduBoundSocket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def close(self) -> None:
        """Stop watching and cut every connection still open, each with an A-ABORT where one can go
        (the node stops: no peer may hold that up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            conn.cut()
