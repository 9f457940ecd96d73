"""The HTTP application: KServe v2 / Open Inference Protocol plus a file-upload endpoint.

``/v2/models/{name}/infer`` runs the model on pre-processed NCHW float32 tensors, the same
tensor Triton's ONNX model takes, so one client (``tritonclient.http``) talks to both.
``/v1/segment`` takes a whole file (DICOM slice, NIfTI, PNG or NPY) and returns the mask.
Every error is a JSON ``{"error": message}`` with a 4xx/5xx code; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg import __version__
from edgeseg.errors import EdgesegError, require
from edgeseg.serve.batcher import MicroBatcher, QueueFull
from edgeseg.serve.metrics import ServerMetrics
from edgeseg.serve.protocol import HEADER_LENGTH, NUMPY_TO_DATATYPE, ProtocolError, decode_request, encode_response
from edgeseg.serve.uploads import segment_upload

# This module is imported only to serve, so the missing-extra message is the right failure here.
fastapi = require("fastapi", "serve", "edgeseg serve")
Request = fastapi.Request


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server."""

    model_name: str = "edgeseg"
    max_batch: int = 8
    queue_size: int = 64
    max_body_bytes: int = 64 << 20
    timeout_s: float = 30.0
    max_delay_s: float = 0.002


class HttpError(Exception):
    """An error answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def create_app(segmenter, config: ServeConfig = ServeConfig()):
    """A FastAPI app serving ``segmenter`` (an ``edgeseg.runtime.Segmenter``) under ``config``."""
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    manifest = segmenter.manifest
    in_info, out_info = manifest.inputs[0], manifest.outputs[0]
    max_batch = min(config.max_batch, manifest.max_batch)
    metrics = ServerMetrics(lambda: batcher.depth)  # read at scrape time, after the batcher exists
    batcher = MicroBatcher(segmenter.infer, max_batch=max_batch, queue_size=config.queue_size,
                           max_delay=config.max_delay_s, on_batch=metrics.batch_size.observe)
    app = fastapi.FastAPI(title="edgeseg", version=__version__, docs_url=None, redoc_url=None)
    app.state.batcher = batcher

    def tensor_meta(info) -> dict:
        return {"name": info.name, "datatype": NUMPY_TO_DATATYPE[np.dtype(info.dtype)], "shape": list(info.shape)}

    def check_model(name: str, version: str | None = None) -> None:
        if name != config.model_name:
            raise HttpError(404, f"unknown model {name!r}; this server serves {config.model_name!r}")
        if version not in (None, "", "1"):
            raise HttpError(404, f"model {name!r} has no version {version!r}; it has version '1'")

    async def read_body(request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise HttpError(413, f"request body of {declared} bytes exceeds the limit of {config.max_body_bytes}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise HttpError(413, f"request body exceeds the limit of {config.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.middleware("http")
    async def count(request, call_next):
        start = time.perf_counter()
        endpoint = _endpoint_label(request.url.path)
        response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(HttpError)
    async def http_error(request, exc: HttpError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(EdgesegError)
    async def edgeseg_error(request, exc: EdgesegError):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(fastapi.exceptions.RequestValidationError)
    async def validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        return JSONResponse({"error": f"bad request: {first.get('msg', 'invalid')} at {first.get('loc')}"},
                            status_code=400)

    @app.get("/v2")
    async def server_metadata():
        return {"name": "edgeseg", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready():
        return Response(status_code=200)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        check_model(name, version)
        return {"name": config.model_name, "versions": ["1"], "platform": f"edgeseg_{segmenter.backend}",
                "inputs": [tensor_meta(in_info)], "outputs": [tensor_meta(out_info)]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        return Response(status_code=200)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        check_model(name, version)
        body = await read_body(request)
        try:
            decoded = decode_request(body, request.headers.get(HEADER_LENGTH))
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        unknown = sorted(set(decoded.inputs) - {in_info.name})
        if unknown or in_info.name not in decoded.inputs:
            raise HttpError(400, f"model {name!r} takes one input {in_info.name!r}, got {sorted(decoded.inputs)}")
        if decoded.outputs is not None and set(decoded.outputs) - {out_info.name}:
            raise HttpError(400, f"model {name!r} has one output {out_info.name!r}, asked for {decoded.outputs}")
        batch = decoded.inputs[in_info.name]
        if batch.ndim == 4 and batch.shape[0] > max_batch:
            raise HttpError(400, f"a request holds at most {max_batch} slices (--max-batch), got {batch.shape[0]}")
        segmenter.runner.check_batch(batch)  # a DataError naming the problem becomes a 400
        try:
            future = batcher.submit(np.ascontiguousarray(batch))
        except QueueFull as exc:
            raise HttpError(503, f"server busy: {exc}; retry later") from None
        try:
            logits = await asyncio.wait_for(asyncio.wrap_future(future), timeout=config.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()
            raise HttpError(504, f"inference did not finish within {config.timeout_s} s") from None
        payload, headers = encode_response(config.model_name, "1", decoded, {out_info.name: logits})
        return Response(content=payload, headers=headers, media_type=headers["content-type"])

    @app.post("/v1/segment")
    async def segment(request: Request, format: str = "npy"):
        body = await read_body(request)
        with tempfile.TemporaryDirectory(prefix="edgeseg-upload-") as tmp:
            payload, media = await run_in_threadpool(segment_upload, segmenter, body, format, Path(tmp))
        return Response(content=payload, media_type=media)

    @app.get("/metrics")
    async def prometheus():
        text, content_type = metrics.render()
        return Response(content=text, media_type=content_type)

    return app


def _endpoint_label(path: str) -> str:
    """A bounded label set for metrics: the route shape, never the raw path."""
    for suffix in ("infer", "ready"):
        if path.startswith("/v2/models/") and path.endswith("/" + suffix):
            return f"model_{suffix}"
    if path.startswith("/v2/models/"):
        return "model_metadata"
    return {"/v2": "server_metadata", "/v2/health/live": "live", "/v2/health/ready": "ready",
            "/v1/segment": "segment", "/metrics": "metrics"}.get(path, "other")
