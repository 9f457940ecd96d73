"""One HTTP request to a server under test, on a connection of its own; waiting for a server
process to be ready."""

from __future__ import annotations

import contextlib
import http.client
import time
import urllib.request


def http_request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 60):
    """(status, headers, body) of one request to ``url`` (``host:port``); the headers are an
    ``http.client.HTTPMessage``, whose look-ups ignore case; an IPv6 host in brackets."""
    host, _, port = url.rpartition(":")
    conn = http.client.HTTPConnection(host.removeprefix("[").removesuffix("]"), int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def wait_ready(proc, port: int, deadline_s: float = 120) -> None:
    """Return once the ``edgeseg serve`` process ``proc`` answers 200 on /v2/health/ready at
    ``port``; RuntimeError (with its stderr, if it exited and kept it) when it exits or does not
    answer within ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as reply:
            if reply.status == 200:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            said = proc.communicate()[1] if proc.poll() is not None and proc.stderr is not None else ""
            raise RuntimeError(f"edgeseg serve did not start (exit status {proc.poll()}): {said or ''}")
        time.sleep(0.2)


def canned_server(metadata: bytes, reply: bytes):
    """A real HTTP server on 127.0.0.1, serving in a thread, that answers every GET with
    ``metadata`` and every POST (after reading its body) with ``reply``: a KServe v2 server whose
    answers a test chooses. Returns the server; call ``shutdown()`` and ``server_close()``."""
    import http.server
    import threading

    class Canned(http.server.BaseHTTPRequestHandler):
        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - the http.server protocol
            self._send(metadata)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(reply)

        def log_message(self, *args):
            """Silent: the tests read the answers, not the server's access lines."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
