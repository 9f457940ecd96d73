"""The server's own failures (500) on a real server on 127.0.0.1: answered as a KServe error,
counted in /metrics with their latency, and logged once with their traceback."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from tests.serve.http_util import http_request

pytest.importorskip("fastapi")


def _request(url, method, path, body=None, timeout=60):
    status, _, data = http_request(url, method, path, body, timeout=timeout)
    return status, data


def _metric(url: str, pattern: str) -> float:
    """The value of the one /metrics sample matching ``pattern`` (0 where there is none yet)."""
    text = _request(url, "GET", "/metrics")[1].decode()
    match = re.search(pattern + r" ([0-9.e+]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def failing_server(server_factory):
    """A server whose network model raises an unexpected error on every call."""
    server = server_factory(max_batch=2)

    def broken(batch):
        raise RuntimeError("the model broke")

    server.app.state.models["edgeseg"].batcher._infer = broken
    return server


def test_a_500_is_counted_in_metrics_with_its_latency_and_logged_once(failing_server):
    url = failing_server.url
    x = np.zeros((1, 1, 64, 64), np.float32)
    body = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    failed = r'edgeseg_requests_total\{code="500",endpoint="model_infer"\}'
    timed = r'edgeseg_request_latency_seconds_count\{endpoint="model_infer"\}'
    before_failed, before_timed = _metric(url, failed), _metric(url, timed)
    records = _Records()
    # on the loggers that write (the CLI's logging set-up stops edgeseg's records propagating)
    watched = [logging.getLogger("edgeseg.serve"), logging.getLogger("uvicorn.error")]
    for logger in watched:
        logger.addHandler(records)
    try:
        status, headers, data = http_request(url, "POST", "/v2/models/edgeseg/infer", body, {"X-Request-ID": "broken-1"})
        # uvicorn logs an exception that reaches it after the response is sent: one more
        # round trip lets the failed request's task finish before the records are read
        assert _request(url, "GET", "/v2/health/ready")[0] == 200
    finally:
        for logger in watched:
            logger.removeHandler(records)
    assert status == 500
    assert json.loads(data) == {"error": "internal server error; the server's log has the details under request ID "
                                         "broken-1"}
    assert headers["X-Request-ID"] == "broken-1"
    assert _metric(url, failed) == before_failed + 1
    assert _metric(url, timed) == before_timed + 1
    tracebacks = [r for r in records.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert "POST /v2/models/edgeseg/infer (request broken-1) failed: RuntimeError: the model broke" in \
        tracebacks[0].getMessage()


@pytest.mark.parametrize("path,label", [
    ("/v2/models/edgeseg/foo", "other"), ("/v2/models/edgeseg/versions/1/nope/ready", "other"),
    ("/v2/models/edgeseg/versions/7", "model_metadata"), ("/v2/models/nope/ready", "model_ready"),
])
def test_metrics_label_a_path_by_the_route_it_reaches(server, path, label):
    pattern = rf'edgeseg_requests_total\{{code="404",endpoint="{label}"\}}'
    before = _metric(server.url, pattern)
    assert _request(server.url, "GET", path)[0] == 404
    assert _metric(server.url, pattern) == before + 1


@pytest.mark.parametrize("path,code,label", [
    ("/v2/repository/index", 200, "repository_index"),
    ("/v2/repository/models/edgeseg/load", 400, "repository_load"),
    ("/v2/repository/models/edgeseg/unload", 400, "repository_unload"),
    ("/v2/repository/models/edgeseg/delete", 404, "other"),
])
def test_metrics_label_the_repository_routes(server, path, code, label):
    """The model repository extension's routes are served, so they are counted under their own
    label; ``other`` is for paths no route serves."""
    pattern = rf'edgeseg_requests_total\{{code="{code}",endpoint="{label}"\}}'
    before = _metric(server.url, pattern)
    assert _request(server.url, "POST", path, b"{}")[0] == code
    assert _metric(server.url, pattern) == before + 1
