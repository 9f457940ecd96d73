"""The server's refusals as HTTP answers: ``HttpError`` and the statuses of overload and of a
client that went away."""

from __future__ import annotations

from concurrent.futures import Future

from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.inflight import OverBudget

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
