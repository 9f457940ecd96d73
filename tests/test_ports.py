"""``tests/ports.reserved_port``: what it promises, checked with real sockets."""

from __future__ import annotations

import errno
import socket

import pytest

from tests.ports import reserved_port


def test_a_reserved_port_is_refused_to_a_plain_bind_and_taken_by_a_server():
    port = reserved_port()
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))  # what the kernel's automatic choice also skips
    assert refused.value.errno == errno.EADDRINUSE
    with socket.create_server(("127.0.0.1", port)) as server:  # SO_REUSEADDR, as the servers under test set
        assert server.getsockname() == ("127.0.0.1", port)


def test_automatic_choices_pass_a_reserved_port_by():
    ports = {reserved_port() for _ in range(20)}
    assert len(ports) == 20, "a reserved port was handed out again"
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            assert sock.getsockname()[1] not in ports
