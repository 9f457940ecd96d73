"""Waiting for the model while watching the client.

A request waits in a queue for the model; where its client closes the connection meanwhile,
nobody will read the answer, so the request is dropped from the queue before the model is spent
on it (and counted as 499, as a client gone mid-body is). Once the model has started on it, it
runs to its end: a batch or a volume cannot be stopped part-way.
"""

from __future__ import annotations

import asyncio
from typing import Literal

Outcome = Literal["done", "gone", "late"]


async def _disconnected(receive) -> None:
    """Return when the client has closed its connection. The request's body has been read whole,
    so the one message left to receive is ``http.disconnect``; the ASGI server sends it when the
    connection closes (it never comes while a keep-alive client waits for its answer)."""
    message = await receive()
    while message["type"] != "http.disconnect":
        message = await receive()


async def first_of(waiter: asyncio.Future, receive, timeout_s: float | None) -> Outcome:
    """Which comes first: ``waiter`` done ("done"), the client of ``receive`` gone ("gone"), or
    ``timeout_s`` seconds passed ("late"). ``waiter`` is left as it is in every case."""
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        done, _ = await asyncio.wait({waiter, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if waiter in done:
        return "done"
    return "gone" if gone in done else "late"
