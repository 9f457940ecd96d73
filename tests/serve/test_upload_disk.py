"""The bytes of /v1/segment upload bodies on disk are bounded (--max-upload-disk-bytes), on a real
server on 127.0.0.1: an upload that would take them past the budget is refused before its bytes
are written (on its announced length, or on the chunk that passes), a compressed upload counts
its decompressed bytes too, and the budget is given back when an upload is answered."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import socket
import time

import numpy as np
import pytest

from edgeseg.serve.upload_disk import mask_bytes
from tests.serve.http_util import http_request

pytest.importorskip("fastapi")

CHUNK = 64 << 10


def _npy(hu: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, hu)
    return out.getvalue()


def _volume(depth: int = 4, side: int = 128) -> np.ndarray:
    hu = np.full((depth, side, side), -1000, np.int16)
    hu[:, side // 4:3 * side // 4, side // 5:4 * side // 5] = 60
    return hu


def _answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of the one answer on ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        assert part, f"connection closed before an answer: {data!r}"
        data += part
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:]))
    while len(body) < int(headers.get("content-length", 0)):
        part = sock.recv(65536)
        assert part, "connection closed mid-answer"
        body += part
    return int(lines[0].split()[1]), headers, body


def _connect(url: str) -> socket.socket:
    host, port = url.split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    return sock


def _headers(length: int | None, extra: str = "") -> bytes:
    sized = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"POST /v1/segment?format=npy HTTP/1.1\r\nHost: x\r\n{sized}{extra}\r\n".encode()


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@contextlib.contextmanager
def _half_sent(url: str, body: bytes):
    """An upload whose headers and first 64 KiB have been sent, yielded (its socket, whose answer
    the caller reads) once the server holds its announced length; the rest is sent on leaving."""
    sock = _connect(url)
    try:
        sock.sendall(_headers(len(body)) + body[:CHUNK])
        deadline = time.monotonic() + 30
        while _held_gauge(url) != len(body):
            assert time.monotonic() < deadline, "the server never took the upload's bytes"
            time.sleep(0.02)
        yield sock
    finally:
        with contextlib.suppress(OSError):
            sock.sendall(body[CHUNK:])


def _segmented(serve_bundle, hu):
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        return local.predict_volume(hu)


def _upload_folders(where) -> list:
    return sorted(p.name for p in where.iterdir())


def _held_gauge(url: str) -> int:
    status, _, data = http_request(url, "GET", "/metrics")
    assert status == 200
    line = next(line for line in data.decode().splitlines() if line.startswith("edgeseg_upload_disk_bytes "))
    return int(float(line.split()[1]))


def test_an_announced_upload_past_the_disk_budget_is_refused_before_it_is_read(server_factory, serve_bundle,
                                                                               tmp_path):
    """While a slow upload holds most of the budget on its announced length, another announcing
    more than is left is answered 503 with Retry-After without having sent a byte of its body,
    and nothing of it lands on disk; once the first is answered, the second fits."""
    hu = _volume()
    first = _npy(hu)
    folder = tmp_path / "uploads"
    folder.mkdir()
    budget = len(first) + mask_bytes(hu.size)  # the first upload's body and mask, nothing more
    server = server_factory(max_batch=4, max_body_bytes=4 << 20, timeout_s=5,
                            max_upload_disk_bytes=budget, upload_dir=str(folder))
    second = _npy(hu[:3])
    assert len(second) > mask_bytes(hu.size)  # more than the first upload leaves
    with _half_sent(server.url, first) as slow:
        with _connect(server.url) as other:
            other.sendall(_headers(len(second)))  # its body is never sent
            status, headers, data = _answer(other)
        assert status == 503 and headers.get("retry-after") == "1", (status, headers, data)
        error = json.loads(data)["error"]
        assert f"upload disk budget of {budget} bytes (--max-upload-disk-bytes)" in error, error
        assert len(_upload_folders(folder)) == 1  # the slow upload's alone
        assert _held_gauge(server.url) == len(first)
    status, _, data = _answer(slow)
    slow.close()
    assert status == 200, data
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), _segmented(serve_bundle, hu))
    assert _held_gauge(server.url) == 0 and _upload_folders(folder) == []
    status, _, data = http_request(server.url, "POST", "/v1/segment?format=npy", second)
    assert status == 200, data
    np.testing.assert_array_equal(np.load(io.BytesIO(data)), _segmented(serve_bundle, hu[:3]))


def test_a_chunked_upload_is_cut_off_on_the_chunk_that_passes_the_disk_budget(server_factory, tmp_path):
    """A chunked upload (no announced length) is refused on the chunk that takes it past what the
    budget has left, not at its end: the client has sent no more and is answered."""
    first = _npy(_volume())
    folder = tmp_path / "uploads"
    folder.mkdir()
    left = 3 * CHUNK + 1000
    server = server_factory(max_batch=4, max_body_bytes=4 << 20, timeout_s=5,
                            max_upload_disk_bytes=len(first) + left, upload_dir=str(folder))
    with _half_sent(server.url, first) as slow:
        with _connect(server.url) as other:
            other.sendall(_headers(None))
            for _ in range(4):  # the fourth passes the budget; the body's last chunk never comes
                other.sendall(_chunked(b"\x93NUMPY".ljust(CHUNK, b"\0")))
            status, headers, data = _answer(other)
        assert status == 503 and headers.get("retry-after") == "1", (status, headers, data)
        assert "--max-upload-disk-bytes" in json.loads(data)["error"]
        assert len(_upload_folders(folder)) == 1
    assert _answer(slow)[0] == 200
    slow.close()
    assert _held_gauge(server.url) == 0


def test_a_chunked_upload_is_cut_off_on_the_chunk_that_passes_the_body_limit(server_factory, tmp_path):
    """The body limit (--max-body-mb) holds for a chunked upload as it arrives: 413 on the chunk
    past it, with no more sent, and nothing of it left on disk."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    server = server_factory(max_batch=4, max_body_bytes=3 * CHUNK, timeout_s=5, upload_dir=str(folder))
    with _connect(server.url) as sock:
        sock.sendall(_headers(None))
        for _ in range(4):
            sock.sendall(_chunked(b"\0" * CHUNK))
        status, _, data = _answer(sock)
    assert status == 413 and f"exceeds the limit of {3 * CHUNK} bytes" in json.loads(data)["error"], data
    assert _upload_folders(folder) == []


def test_an_announced_length_past_the_body_limit_is_refused_unread(server_factory, tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    server = server_factory(max_batch=4, max_body_bytes=1 << 20, timeout_s=5, upload_dir=str(folder))
    with _connect(server.url) as sock:
        sock.sendall(_headers((1 << 20) + 1))
        status, _, data = _answer(sock)
    assert status == 413 and "request body of 1048577 bytes exceeds the limit" in json.loads(data)["error"], data
    assert _upload_folders(folder) == []


def test_a_compressed_upload_counts_its_decompressed_bytes(server_factory, tmp_path):
    """A gzip upload of a few kilobytes that inflates past what the budget has left is refused
    (503) while it is decompressed, and its files are removed."""
    first = _npy(_volume())
    folder = tmp_path / "uploads"
    folder.mkdir()
    server = server_factory(max_batch=4, max_body_bytes=4 << 20, timeout_s=5,
                            max_upload_disk_bytes=len(first) + 200_000, upload_dir=str(folder))
    bomb = gzip.compress(_npy(np.zeros((8, 128, 128), np.int16)))
    assert len(bomb) < 10_000
    with _half_sent(server.url, first) as slow:
        status, headers, data = http_request(server.url, "POST", "/v1/segment?format=npy", bomb,
                                             {"Content-Encoding": "gzip"})
        assert status == 503 and headers.get("retry-after") == "1", (status, headers, data)
        assert "--max-upload-disk-bytes" in json.loads(data)["error"]
        assert len(_upload_folders(folder)) == 1
    assert _answer(slow)[0] == 200
    slow.close()


@pytest.mark.parametrize("fmt", ["npy", "nifti", "png"])
def test_the_mask_is_counted_with_the_body(server_factory, serve_bundle, tmp_path, fmt):
    """The mask file is written beside the body: an upload whose body fits the budget but whose
    body and mask (a byte a voxel, plus its header) do not is refused (413: it could never fit),
    and one whose both fit is answered; the mask it got is never
    larger than what was counted for it."""
    hu = _volume(depth=1 if fmt == "png" else 4)
    body = _npy(hu)
    folder = tmp_path / "uploads"
    folder.mkdir()
    short = server_factory(max_batch=4, max_body_bytes=4 << 20, timeout_s=5, upload_dir=str(folder),
                           max_upload_disk_bytes=len(body) + mask_bytes(hu.size) - 1)
    status, _, data = http_request(short.url, "POST", f"/v1/segment?format={fmt}", body)
    assert status == 413 and "--max-upload-disk-bytes" in json.loads(data)["error"], data
    assert _held_gauge(short.url) == 0 and _upload_folders(folder) == []
    enough = server_factory(max_batch=4, max_body_bytes=4 << 20, timeout_s=5, upload_dir=str(folder),
                            max_upload_disk_bytes=len(body) + mask_bytes(hu.size))
    status, _, data = http_request(enough.url, "POST", f"/v1/segment?format={fmt}", body)
    assert status == 200, data
    assert len(data) <= mask_bytes(hu.size)
    assert _held_gauge(enough.url) == 0 and _upload_folders(folder) == []
