"""Request bodies sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's
``request_compression_algorithm``), decompressed within the server's body limit.

The limit applies to the decompressed size, and decompression stops one byte past it, so a
small compressed body that would expand to gigabytes (a zip bomb) costs at most the limit.
"""

from __future__ import annotations

import zlib

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
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in _WBITS:
        raise BodyError(415, f"Content-Encoding {content_encoding!r} is not supported; use gzip, deflate or none")
    error = None
    for wbits in _WBITS[encoding]:
        try:
            return _inflate(raw, wbits, limit, encoding)
        except zlib.error as exc:
            error = exc
    raise BodyError(400, f"request body is not valid {encoding} data: {error}")


def _inflate(raw: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    stream = zlib.decompressobj(wbits)
    body = stream.decompress(raw, limit + 1)
    if len(body) > limit or (stream.unconsumed_tail and not stream.eof):
        raise BodyError(413, f"request body exceeds the limit of {limit} bytes once {encoding}-decompressed")
    if not stream.eof:
        raise BodyError(400, f"request body is a truncated {encoding} stream")
    if stream.unused_data:
        raise BodyError(400, f"request body has {len(stream.unused_data)} bytes after the end of its {encoding} stream")
    return body
