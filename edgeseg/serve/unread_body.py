"""Closing the connection after an answer to a client still waiting to send its body.

A client that sends ``Expect: 100-continue`` (curl does for bodies over 1 MB) waits for
``100 Continue`` before sending the body. Where the server answers first (a 413 on the
announced length, a 404 for an unknown model), that body never comes; if the connection stayed
open, the server would read the client's next request on it as the old body and never answer
it. So such an answer says ``Connection: close`` (RFC 9110 10.1.1), and the server closes the
connection. A client that sends its body without waiting is not affected: the server reads and
drops the rest of the body and the connection stays open (closing it under a client still
sending would reset the connection before the client read the answer).
"""

from __future__ import annotations

_CLOSE = (b"connection", b"close")


class CloseUnreadBodies:
    """ASGI middleware adding ``Connection: close`` to a response started before the body of a
    request with ``Expect: 100-continue`` was asked for."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or dict(scope["headers"]).get(b"expect", b"").lower() != b"100-continue":
            await self.app(scope, receive, send)
            return
        asked = False

        async def receive_tracked():
            nonlocal asked
            asked = True  # the server sends 100 Continue now: the body will come
            return await receive()

        async def send_closing(message) -> None:
            if message["type"] == "http.response.start" and not asked:
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*kept, _CLOSE]}
            await send(message)

        await self.app(scope, receive_tracked, send_closing)
