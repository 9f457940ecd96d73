"""The server's refusals as HTTP answers: ``HttpError``, the statuses of overload and of a
client that went away, and the answer to a failure of the server itself."""

from __future__ import annotations

import logging
from concurrent.futures import Future

from edgeseg.serve.audit import request_id
from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.inflight import OverBudget

log = logging.getLogger("edgeseg.serve")

# The status a request is counted under when its client went away before it was answered (nginx's)
CLIENT_CLOSED = 499
# Seconds a client refused for overload is told to wait (Retry-After): about one batch's time, as
# the queue and the budget free with every answer
RETRY_AFTER_S = 1


class HttpError(Exception):
    """An error answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


def refused(exc: Exception) -> HttpError:
    """The answer to a request refused for overload: 503 with Retry-After (a full queue or byte
    budget frees as requests are answered), or 413 for one the whole budget cannot hold."""
    if isinstance(exc, OverBudget):
        return HttpError(413, str(exc))
    return HttpError(503, f"server busy: {exc}; retry later", {"Retry-After": str(RETRY_AFTER_S)})


def submitted(submit, *args) -> Future:
    """``submit(*args)`` to a queue for the model; 503 when the queue is full."""
    try:
        return submit(*args)
    except QueueFull as exc:
        raise refused(exc) from None


def hold(held, nbytes: int) -> None:
    """``held.grow(nbytes)``; 503 (or 413) when the byte budget cannot take them."""
    try:
        held.grow(nbytes)
    except (QueueFull, OverBudget) as exc:
        raise refused(exc) from None


def server_fault(request, text: str, exc_info: BaseException | None = None, logged: bool = False):
    """The answer to a failure of the server itself: 500 with a message naming only the request's
    ID. The failure's ``text`` (and traceback, given ``exc_info``) goes to the server's log under
    that ID, unless ``logged`` says it is logged elsewhere, and to the request's audit line
    (``request.state.server_error``): an exception's text may name the server's files (the
    bundle, the upload folder) or the hosts behind it (a remote backend), which are not the
    client's to see."""
    from fastapi.responses import JSONResponse

    rid = getattr(request.state, "request_id", None) or request_id(request.headers.get("x-request-id"))
    detail = " ".join(text.split()) or "unknown error"
    request.state.server_error = detail[:500]
    if not logged:
        log.error("%s %s (request %s) failed: %s", request.method, request.url.path, rid, detail, exc_info=exc_info)
    return JSONResponse({"error": f"internal server error; the server's log has the details under request ID {rid}"},
                        status_code=500, headers={"X-Request-ID": rid})
