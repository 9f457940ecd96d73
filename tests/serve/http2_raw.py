"""A bare HTTP/2 client over a socket, for clients no gRPC library would be: one that stops in
the connection preface, one that opens a connection and never calls, one that sends a call and
never reads (or acknowledges) what comes back. Frames are written by hand (RFC 9113, HPACK
literals without Huffman coding), so nothing is hidden by a library's own timers."""

from __future__ import annotations

import select
import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + bytes([value]))


def header_block(headers) -> bytes:
    """HPACK literal fields without indexing (new names), no Huffman coding."""
    block = bytearray()
    for name, value in headers:
        block += b"\x00" + _hpack_int(len(name), 7) + name.encode() + _hpack_int(len(value), 7) + value.encode()
    return bytes(block)


def grpc_call(stream: int, path: str, message: bytes, port: int, extra=()) -> bytes:
    """HEADERS and DATA frames of one unary gRPC call carrying ``message`` (serialized protobuf)."""
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{port}"),
               ("content-type", "application/grpc"), ("te", "trailers"), *extra]
    body = b"\x00" + struct.pack(">I", len(message)) + message
    frames = [frame(HEADERS, END_HEADERS, stream, header_block(headers))]
    for start in range(0, len(body), 16384):
        last = start + 16384 >= len(body)
        frames.append(frame(DATA, END_STREAM if last else 0, stream, body[start:start + 16384]))
    return b"".join(frames)


def connect(port: int, preface: bool = True, receive_window: int | None = None) -> socket.socket:
    """A connection to 127.0.0.1:``port``; with ``preface``, the client's preface and SETTINGS sent
    (``receive_window``: SETTINGS_INITIAL_WINDOW_SIZE, the bytes the server may send a stream)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if preface:
        settings = b"" if receive_window is None else struct.pack(">HI", 0x4, receive_window)
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))
    return sock


def read_frames(sock: socket.socket, seconds: float, answer_pings: bool = True, until_answered: bool = False):
    """The (kind, flags, stream, payload) frames the server sends within ``seconds``, until it
    closes the connection (then the last item is None) or, with ``until_answered``, ends a
    stream; PINGs answered where ``answer_pings``."""
    sock.settimeout(seconds)
    buffer, frames = b"", []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                frames.append(None)
                return frames
            buffer += chunk
            while len(buffer) >= 9:
                length = int.from_bytes(buffer[:3], "big")
                if len(buffer) < 9 + length:
                    break
                kind, flags, stream = buffer[3], buffer[4], int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                frames.append((kind, flags, stream, payload))
                if until_answered and stream and flags & END_STREAM and kind in (HEADERS, DATA):
                    return frames
                if kind == SETTINGS and not flags & 1:
                    sock.sendall(frame(SETTINGS, 1, 0))
                elif kind == PING and not flags & 1 and answer_pings:
                    sock.sendall(frame(PING, 1, 0, payload))
    except (socket.timeout, TimeoutError):
        return frames
    except (ConnectionResetError, BrokenPipeError):
        frames.append(None)
        return frames


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (what it sends before is read and dropped)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):  # read and dropped until the server closes
            continue
    except (socket.timeout, TimeoutError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    return True


def first_answered(socks, seconds: float):
    """The index of the first of ``socks`` on which the server ends a stream within ``seconds``
    (None if none does) and that stream's frames; SETTINGS and PINGs answered on all of them.
    ``socks`` is a list."""
    deadline, buffers = time.monotonic() + seconds, {sock: b"" for sock in socks}
    frames = {sock: [] for sock in socks}
    while (left := deadline - time.monotonic()) > 0:
        for sock in select.select(list(socks), [], [], left)[0]:
            chunk = sock.recv(65536)
            buffers[sock] += chunk
            while len(buffers[sock]) >= 9 and len(buffers[sock]) >= 9 + int.from_bytes(buffers[sock][:3], "big"):
                buffer = buffers[sock]
                length, kind, flags = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4]
                stream, payload = int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF, buffer[9:9 + length]
                buffers[sock] = buffer[9 + length:]
                frames[sock].append((kind, flags, stream, payload))
                if stream and flags & END_STREAM and kind in (HEADERS, DATA):
                    return socks.index(sock), frames[sock]
                if kind == SETTINGS and not flags & 1:
                    sock.sendall(frame(SETTINGS, 1, 0))
                elif kind == PING and not flags & 1:
                    sock.sendall(frame(PING, 1, 0, payload))
            if not chunk:
                return socks.index(sock), frames[sock] + [None]
    return None, []
