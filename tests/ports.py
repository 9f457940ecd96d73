"""A TCP port on 127.0.0.1 for a server a test starts, held back from everyone else until then.

A port found by binding port 0 and closing is free only for that instant: before the server under
test binds it, the kernel may hand it to any other socket, most often as the source port of some
connection another test (or xdist worker) opens, and the server then fails with "Address already in
use". ``reserved_port`` instead leaves the port in TIME_WAIT: it accepts one connection on it and
closes the accepted end first. For about a minute the kernel then keeps the port out of automatic
choice (``bind`` to port 0, the source port of ``connect``) and out of any plain ``bind``, while a
server that sets SO_REUSEADDR, as uvicorn, pynetdicom, dcmtk and ``socket.create_server`` do, binds
it at once.
"""

from __future__ import annotations

import socket


def reserved_port() -> int:
    """A port on 127.0.0.1 that a SO_REUSEADDR server can bind and nothing picks automatically."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockname() == ("127.0.0.1", port), accepted.getsockname()
            client.recv(1)  # the accepted end closed first: TIME_WAIT stays on the server's side
    return port
