"""Reading a request's body within the server's limits: into memory (a ``/v2`` request, which
is decoded from bytes) or, a chunk at a time, into a file (an upload, which its reader takes
from a file), so that an upload's bytes are never held in memory beside its decoded volume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from edgeseg.serve.encoding import BodyError, decode_body, decode_file
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError, hold

_FLUSH = 1 << 20  # bytes of an upload gathered before they are written, off the event loop


class BodyReader:
    """The body of a request: at most ``max_bytes`` (413 beyond, sent or once decompressed),
    408 when ``timeout_s`` passes without a byte, 499 when the client leaves mid-body."""

    def __init__(self, max_bytes: int, timeout_s: float) -> None:
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)

    async def read(self, request) -> bytes:
        """The whole body, decoded as its Content-Encoding says."""
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        await self._receive(request, keep)
        try:
            return decode_body(b"".join(chunks), request.headers.get("content-encoding"), self.max_bytes)
        except BodyError as exc:
            raise HttpError(exc.status, str(exc)) from None

    async def save(self, request, path: Path, on_disk=None) -> Path:
        """The file holding the whole body, decoded as its Content-Encoding says: written as it
        arrives to ``path`` (and decompressed beside it where it was sent compressed). Given
        ``on_disk`` (an ``edgeseg.serve.inflight.Holding``), every byte is taken from it before
        it is written (503 when they do not fit): a body's announced length before any of it is
        read, else each chunk as it arrives, and decompressed bytes on top as they are written."""
        from starlette.concurrency import run_in_threadpool

        grow = (lambda nbytes: hold(on_disk, nbytes)) if on_disk is not None else (lambda nbytes: None)
        declared = self._declared(request)
        if declared is not None:
            grow(declared)
        received = 0
        pending: list[bytes] = []
        try:
            with open(path, "wb") as out:

                def flush() -> None:
                    out.write(b"".join(pending))
                    pending.clear()

                async def gather(chunk: bytes) -> None:
                    nonlocal received
                    received += len(chunk)
                    grow(received)  # a no-op within an announced length
                    pending.append(chunk)
                    if sum(map(len, pending)) >= _FLUSH:
                        await run_in_threadpool(flush)

                await self._receive(request, gather)
                await run_in_threadpool(flush)
        except OSError as exc:  # a failed write() names no file: this one
            exc.filename = exc.filename or str(path)
            raise

        def written(nbytes: int) -> None:
            nonlocal received
            received += nbytes
            grow(received)

        try:
            return await run_in_threadpool(decode_file, path, request.headers.get("content-encoding"),
                                           self.max_bytes, written)
        except BodyError as exc:
            raise HttpError(exc.status, str(exc)) from None

    def _declared(self, request) -> int | None:
        """The body's announced length; 413 when it exceeds the limit."""
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            return None
        if int(declared) > self.max_bytes:
            raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {self.max_bytes}")
        return int(declared)

    async def _receive(self, request, take: Callable[[bytes], Awaitable[None]]) -> None:
        from starlette.requests import ClientDisconnect

        self._declared(request)
        size = 0
        stream = request.stream()
        try:
            while True:
                try:
                    # a client that stops sending must not hold its connection and task for good
                    chunk = await asyncio.wait_for(anext(stream), self.timeout_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    # the rest of the body may still come: the connection cannot carry another request
                    raise HttpError(408, f"no request body bytes arrived for {self.timeout_s} s "
                                         f"({size} received)", {"Connection": "close"}) from None
                size += len(chunk)
                if size > self.max_bytes:
                    raise HttpError(413, f"request body exceeds the limit of {self.max_bytes} bytes")
                await take(chunk)
        except ClientDisconnect:
            # the client's doing, not the server's: counted as nginx counts it, not as a 500
            raise HttpError(CLIENT_CLOSED, "the client closed the connection before sending the whole body") from None
