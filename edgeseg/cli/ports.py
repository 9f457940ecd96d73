"""The listening address a server command will bind, checked before the command loads its model."""

from __future__ import annotations


def check_port(host: str, port: int) -> None:
    """DataError naming the address when it cannot be bound, before the model is loaded."""
    import socket

    from edgeseg.errors import DataError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DataError(f"--host {host!r} does not resolve: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and pynetdicom bind
        try:
            sock.bind(address)
        except OSError as exc:
            raise DataError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
