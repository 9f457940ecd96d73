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
    ``http.client.HTTPMessage``, whose look-ups ignore case."""
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
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
