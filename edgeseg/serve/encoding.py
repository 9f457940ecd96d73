"""Request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's
``request_compression_algorithm``), decompressed within the server's body limit.

The limit applies to the decompressed size, and decompression stops one byte past it, so a
small compressed body that would expand to gigabytes (a zip bomb) costs at most the limit.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

_CHUNK = 1 << 20  # bytes of a body file decompressed at a time
# gzip wraps deflate in a gzip header; HTTP's "deflate" is the zlib format (RFC 9110), though
# some clients send raw deflate: wbits 16+15 reads gzip, 15 zlib, -15 raw deflate.
_WBITS = {"gzip": (16 + zlib.MAX_WBITS,), "x-gzip": (16 + zlib.MAX_WBITS,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}


class BodyError(ValueError):
    """A body that cannot be decoded; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def decode_body(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``raw`` decompressed as ``content_encoding`` says (identity, gzip or deflate).

    BodyError 415 for another encoding, 413 when the decompressed body exceeds ``limit``
    bytes, 400 for a stream that is corrupt or truncated.
    """
    encoding = _encoding(content_encoding)
    if encoding == "identity":
        return raw
    parts: list[bytes] = []
    _decoded(lambda wbits: _inflate(iter([raw]), parts.append, wbits, limit, encoding), parts.clear, encoding)
    return b"".join(parts)


def decode_file(raw: Path, content_encoding: str | None, limit: int,
                written: Callable[[int], object] = lambda nbytes: None) -> Path:
    """The file holding ``raw`` decompressed as ``content_encoding`` says: ``raw`` itself for
    identity, else a file beside it (``raw`` is removed), decompressed a chunk at a time so that
    neither body is ever held in memory whole; BodyError as :func:`decode_body`. ``written(n)``
    is told of each ``n`` bytes before they are written, and may refuse them by raising."""
    encoding = _encoding(content_encoding)
    if encoding == "identity":
        return raw
    decoded = raw.with_name(raw.name + ".decoded")
    peak = [0]  # the most bytes the decoded file has held
    with open(decoded, "wb") as out:

        def write(part: bytes) -> None:
            if out.tell() + len(part) > peak[0]:  # a retry in another format rewrites bytes already counted
                written(out.tell() + len(part) - peak[0])
                peak[0] = out.tell() + len(part)
            out.write(part)

        def attempt(wbits: int) -> None:
            with open(raw, "rb") as source:
                _inflate(iter(lambda: source.read(_CHUNK), b""), write, wbits, limit, encoding)

        def restart() -> None:
            out.seek(0)
            out.truncate()

        _decoded(attempt, restart, encoding)
    raw.unlink()
    return decoded


def _encoding(content_encoding: str | None) -> str:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return "identity"
    if encoding not in _WBITS:
        raise BodyError(415, f"Content-Encoding {content_encoding!r} is not supported; use gzip, deflate or none")
    return encoding


def _decoded(attempt: Callable[[int], None], restart: Callable[[], None], encoding: str) -> None:
    """``attempt(wbits)`` for each format the encoding may be sent in, ``restart()`` between."""
    error = None
    for wbits in _WBITS[encoding]:
        try:
            attempt(wbits)
            return
        except zlib.error as exc:
            error = exc
            restart()
    raise BodyError(400, f"request body is not valid {encoding} data: {error}")


def _inflate(chunks: Iterator[bytes], write: Callable[[bytes], object], wbits: int, limit: int, encoding: str) -> None:
    stream = zlib.decompressobj(wbits)
    size = 0
    for chunk in chunks:
        while chunk and not stream.eof:
            # at most one byte past the limit: a zip bomb costs no more than the limit
            part = stream.decompress(chunk, limit + 1 - size)
            size += len(part)
            if size > limit:
                raise BodyError(413, f"request body exceeds the limit of {limit} bytes once {encoding}-decompressed")
            write(part)
            chunk = stream.unconsumed_tail
        if stream.eof:
            after = len(stream.unused_data) + sum(len(rest) for rest in chunks)
            if after:
                raise BodyError(400, f"request body has {after} bytes after the end of its {encoding} stream")
            return
    raise BodyError(400, f"request body is a truncated {encoding} stream")
