"""Counting, auditing and naming each HTTP answer: the server's outermost but one ASGI middleware.

Each answer gets its request's ``X-Request-ID``, a count and a latency in /metrics, and (given an
audit log) one audit line before it leaves; an answer the audit log cannot record is replaced by
a 507 (no room) or 500. A pure ASGI middleware that never calls ``receive()``, not Starlette's
``BaseHTTPMiddleware``: with Starlette 0.36 (fastapi 0.110's) to at least 0.40 that one streams
every answer through a response that calls ``receive()`` at once to watch for a disconnect; on
that first ``receive()`` uvicorn sends ``100 Continue`` to a client that sent
``Expect: 100-continue``, inviting a body the server has already refused
(``edgeseg.serve.unread_body``).
"""

from __future__ import annotations

import json
import logging
import time

from edgeseg.serve.audit import AuditLogError, audit_request, request_id
from edgeseg.serve.http_errors import server_fault

log = logging.getLogger("edgeseg.serve")
_PROBES = ("live", "ready", "metrics")  # probed every few seconds: not audited, noise


class CountAnswers:
    """ASGI middleware: ``metrics`` counts each answer under ``endpoint_label(path)``, ``audit``
    (an ``edgeseg.serve.audit.AuditLog`` or None) records it, and its ``X-Request-ID`` is set."""

    def __init__(self, app, metrics, audit, endpoint_label) -> None:
        self.app, self.metrics, self.audit, self.endpoint_label = app, metrics, audit, endpoint_label

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        start = time.perf_counter()
        request = Request(scope)
        endpoint = self.endpoint_label(request.url.path)
        rid = request_id(request.headers.get("x-request-id"))
        request.state.request_id = rid  # the handlers' answers to a failure name it
        started, replaced = False, False

        async def send_counted(message) -> None:
            nonlocal started, replaced
            if replaced:  # the rest of an answer the audit log could not record
                return
            if message["type"] == "http.response.start":
                started = True
                refusal = await self._audit(request, endpoint, rid, message["status"], start)
                if refusal is not None:
                    replaced = True
                    message, body = refusal
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*kept, (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)
            if replaced:
                await send({"type": "http.response.body", "body": body})

        try:
            await self.app(scope, receive, send_counted)
        except Exception as exc:  # no handler answered: a 500, counted here and logged once
            if started:
                raise
            await server_fault(request, f"{type(exc).__name__}: {exc}", exc_info=exc)(scope, receive, send_counted)

    async def _audit(self, request, endpoint: str, rid: str, status: int, start: float):
        """None where the audit log records the answer (or none is kept); else the start and body
        of the 507 (no room) or 500 answer to send in its place."""
        if self.audit is None or endpoint in _PROBES:
            return None
        from starlette.concurrency import run_in_threadpool

        try:
            # off the event loop: a log that blocks (a lock another process holds, a slow disk,
            # a pipe waiting for room) holds up this answer, never the server's other answers
            await run_in_threadpool(audit_request, self.audit, request, rid, status, time.perf_counter() - start,
                                    error=getattr(request.state, "server_error", None))
        except AuditLogError as exc:  # an audited server hands out no answer it could not record
            code = 507 if exc.no_room else 500
            log.error("%s %s: %s; answered %d", request.method, request.url.path, exc, code)
            body = json.dumps({"error": f"the server cannot record the request in its audit log: {exc.reason}"},
                              ensure_ascii=False, separators=(",", ":")).encode()
            return ({"type": "http.response.start", "status": code,
                     "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
                    body)
        return None
