"""One HTTP request to a server under test, on a connection of its own."""

from __future__ import annotations

import http.client


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
