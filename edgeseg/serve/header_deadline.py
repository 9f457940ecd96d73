"""A deadline for a request's headers, which uvicorn does not have.

uvicorn (0.55) starts no timer when a connection opens, and its keep-alive timer stops at the
first byte of the next request, so a client that opens connections and sends a partial request
line or header (or nothing) holds each of them until the server stops; h11 has no clock of its
own. ``header_deadline_protocol`` subclasses uvicorn's h11 protocol: from the moment a connection
waits for a request (when it opens, and after each answer) it has ``seconds`` to complete the
request's headers, else it is closed, as nginx's ``client_header_timeout`` does. A request whose
headers are complete is timed by the server's own limits (its body, its result).
"""

from __future__ import annotations

from edgeseg.errors import require


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol class with a header deadline of ``seconds`` (pass it as ``http=``)."""
    h11 = require("h11", "serve", "edgeseg serve")
    H11Protocol = require("uvicorn.protocols.http.h11_impl", "serve", "edgeseg serve").H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        _deadline = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request's headers are in
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # waiting for the next request on this connection

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol
