"""Reading a request's body within the server's limits: into memory (a ``/v2`` request, which
is decoded from bytes) or, a chunk at a time, into a file (an upload, which its reader takes
from a file), so that an upload's bytes are never held in memory beside its decoded volume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from edgeseg.serve.encoding import BodyError, decode_body, decode_file
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError

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

    async def save(self, request, path: Path) -> Path:
        """The file holding the whole body, decoded as its Content-Encoding says: written as it
        arrives to ``path`` (and decompressed beside it where it was sent compressed)."""
        from starlette.concurrency import run_in_threadpool

        pending: list[bytes] = []
        try:
            with open(path, "wb") as out:

                def flush() -> None:
                    out.write(b"".join(pending))
                    pending.clear()

                async def gather(chunk: bytes) -> None:
                    pending.append(chunk)
                    if sum(map(len, pending)) >= _FLUSH:
                        await run_in_threadpool(flush)

                await self._receive(request, gather)
                await run_in_threadpool(flush)
        except OSError as exc:  # a failed write() names no file: this one
            exc.filename = exc.filename or str(path)
            raise
        try:
            return await run_in_threadpool(decode_file, path, request.headers.get("content-encoding"), self.max_bytes)
        except BodyError as exc:
            raise HttpError(exc.status, str(exc)) from None

    async def _receive(self, request, take: Callable[[bytes], Awaitable[None]]) -> None:
        from starlette.requests import ClientDisconnect

        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {self.max_bytes}")
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
