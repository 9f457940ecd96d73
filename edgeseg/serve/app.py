"""The HTTP application: KServe v2 / Open Inference Protocol plus a file-upload endpoint.

Two models are served (``edgeseg.serve.models``): ``NAME`` runs the network on pre-processed
NCHW float32 tensors, the tensor Triton's ONNX model takes, and ``NAME-pipeline`` takes CT
values and returns labels, as ``edgeseg predict`` does; one client (``tritonclient.http``) talks
to this server and to Triton. ``/v1/segment`` (``edgeseg.serve.segment_route``) takes a whole
file (DICOM slice, NIfTI, PNG or NPY) and returns the mask. Request bodies may be gzip- or
deflate-encoded. Every error, unknown routes and methods included, is a JSON
``{"error": message}`` with a 4xx/5xx code; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass

from edgeseg import __version__
from edgeseg.errors import BackendError, EdgesegError, require
from edgeseg.serve.counting import CountAnswers
from edgeseg.serve.http_errors import HttpError, server_fault
from edgeseg.serve.inflight import ByteBudget
from edgeseg.serve.metrics import ServerMetrics
from edgeseg.serve.model_call import find_model, in_turn, run_request, triton_config
from edgeseg.serve.model_inputs import DEFAULT_MAX_SIDE
from edgeseg.serve.models import ServedModel, served_models
from edgeseg.serve.protocol import HEADER_LENGTH, ProtocolError, decode_request, encode_response
from edgeseg.serve.request_body import BodyReader
from edgeseg.serve.segment_route import add_segment_route
from edgeseg.serve.unread_body import CloseUnreadBodies
from edgeseg.serve.upload_disk import upload_disk
from edgeseg.serve.uploads import ModelQueue

# This module is imported only to serve, so the missing-extra message is the right failure here.
fastapi = require("fastapi", "serve", "edgeseg serve")
Request = fastapi.Request
log = logging.getLogger("edgeseg.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one server."""

    model_name: str = "edgeseg"
    max_batch: int = 8
    queue_size: int = 64
    max_body_bytes: int = 64 << 20
    timeout_s: float = 30.0
    max_delay_s: float = 0.002
    max_side: int = DEFAULT_MAX_SIDE
    # bytes of decoded inputs held for requests in flight; None: twice the volume limit in force
    max_inflight_bytes: int | None = None
    # bytes of upload bodies held on disk; None: the in-flight budget, or twice max_body_bytes if more
    max_upload_disk_bytes: int | None = None
    # the folder uploads are written in; None: the temporary folder (TMPDIR)
    upload_dir: str | None = None
    # HOST:PORT of the KServe v2 gRPC service started beside the HTTP routes; None: no gRPC
    grpc_address: str | None = None


def create_app(segmenter, config: ServeConfig = ServeConfig(), audit=None):
    """A FastAPI app serving ``segmenter`` (an ``edgeseg.runtime.Segmenter``) under ``config``;
    each request is answered with its ``X-Request-ID`` and, given ``audit`` (an
    ``edgeseg.serve.audit.AuditLog``), logged there as one line. The app starts worker threads
    (one per model and one for uploads) that its lifespan shutdown stops; where its lifespan
    does not run, stop them with :func:`close_app`."""
    from fastapi.responses import Response

    from edgeseg.limits import current_limits

    model_lock = threading.Lock()
    budget = ByteBudget(config.max_inflight_bytes or 2 * current_limits().max_volume_bytes)
    # a compressed body and its decompressed copy lie side by side: twice the body limit, or an
    # upload within it could never be saved
    disk = upload_disk(config.upload_dir, config.max_upload_disk_bytes or max(budget.limit, 2 * config.max_body_bytes))
    # read at scrape time: requests queued for either model and uploads waiting for it
    metrics = ServerMetrics(lambda: sum(m.batcher.depth for m in models.values()) + uploads.depth,
                            lambda: budget.held, lambda: models, lambda: disk.budget.held)
    models = served_models(segmenter, config, metrics.batch_size.observe, model_lock)
    uploads = ModelQueue(model_lock, config.queue_size)
    app = fastapi.FastAPI(title="edgeseg", version=__version__, docs_url=None, redoc_url=None, lifespan=_lifespan)
    app.state.models, app.state.uploads, app.state.budget, app.state.disk = models, uploads, budget, disk
    app.state.config = config
    # Decoding a JSON body and encoding a JSON answer take seconds for large tensors: in a thread,
    # so the event loop answers health checks and other requests meanwhile; one at a time, so at
    # most one body's worth of Python objects lives at once, as when they ran on the loop.
    codec = asyncio.Semaphore(1)
    app.state.codec, app.state.audit = codec, audit  # the gRPC service's too
    bodies = BodyReader(config.max_body_bytes, config.timeout_s)

    def model_for(name: str, version: str | None = None) -> ServedModel:
        return find_model(models, name, version)

    app.add_middleware(CountAnswers, metrics=metrics, audit=audit, endpoint_label=_endpoint_label)
    # outermost: it must see every answer, the counting middleware's 500s included
    app.add_middleware(CloseUnreadBodies)
    _install_error_handlers(app)

    def get(path: str):
        # HTTP requires HEAD wherever GET is served (RFC 9110 9.3.2); probes and load balancers use it
        return app.api_route(path, methods=["GET", "HEAD"])

    @get("/v2")
    async def server_metadata():
        return {"name": "edgeseg", "version": __version__,
                "extensions": ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]}

    @get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @get("/v2/health/ready")
    async def ready():
        return Response(status_code=200)

    @get("/v2/models/stats")
    async def all_statistics():
        return {"model_stats": [m.stats.to_dict(name) for name, m in models.items()]}

    @get("/v2/models/{name}")
    @get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        return model_for(name, version).metadata()

    @get("/v2/models/{name}/ready")
    @get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None):
        model_for(name, version)
        return Response(status_code=200)

    @get("/v2/models/{name}/config")
    @get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str | None = None):
        return triton_config(model_for(name, version))

    @get("/v2/models/{name}/stats")
    @get("/v2/models/{name}/versions/{version}/stats")
    async def model_statistics(name: str, version: str | None = None):
        model = model_for(name, version)
        return {"model_stats": [model.stats.to_dict(model.name)]}

    @app.post("/v2/repository/index")
    async def repository_index():
        return [{"name": name, "version": "1", "state": "READY"} for name in sorted(models)]

    @app.post("/v2/repository/models/{name}/load")
    @app.post("/v2/repository/models/{name}/unload")
    async def model_control(name: str):
        raise HttpError(400, "edgeseg serve serves a fixed set of models "
                             f"{sorted(models)}: loading and unloading are not supported")

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        model = model_for(name, version)
        body = await bodies.read(request)
        start = time.perf_counter_ns()
        try:
            decoded = await in_turn(codec, decode_request, body, request.headers.get(HEADER_LENGTH))
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None

        async def encode(result):
            return await in_turn(codec, _encoded, model, decoded, result)

        # a DataError naming the problem in the input becomes a 400
        payload, headers = await run_request(model, decoded, budget, config.timeout_s, start, encode, request.receive)
        return Response(content=payload, headers=headers, media_type=headers["content-type"])

    add_segment_route(app, segmenter, uploads, budget, bodies, disk, config.timeout_s)

    @get("/metrics")
    async def prometheus():
        text, content_type = metrics.render()
        return Response(content=text, media_type=content_type)

    return app


def close_app(app) -> None:
    """Stop the worker threads :func:`create_app` started for ``app``, each after the call it has
    in flight; requests still waiting for the model, and those that reach ``app`` afterwards, are
    answered 503. Its lifespan shutdown
    calls this once the server has answered the requests in flight; call it yourself where that
    does not run (an app mounted inside another, whose lifespan Starlette does not run, or one
    never served). Calling it again does nothing. The segmenter and audit log given to
    ``create_app`` stay open: they are the caller's to close."""
    workers = [model.batcher for model in app.state.models.values()] + [app.state.uploads]
    for worker in workers:  # every waiting request refused first, then the threads waited for
        worker.stop()
    for worker in workers:
        worker.close()


@contextlib.asynccontextmanager
async def _lifespan(app):
    config = app.state.config
    app.state.grpc_server = app.state.grpc_stopping = None
    if config.grpc_address is not None:  # on the HTTP server's event loop, started and stopped with it
        from edgeseg.serve.grpc_service import start_grpc_server

        app.state.grpc_server = await start_grpc_server(app, config.grpc_address)
    yield
    stopping = stop_grpc(app)  # begun already where the server's shutdown began it
    if stopping is not None:
        await stopping
    close_app(app)


def stop_grpc(app):
    """Begin stopping ``app``'s gRPC service, once: new RPCs are refused (UNAVAILABLE) from now on,
    those in flight finish (each within the timeout). The stopping task; None without gRPC. The
    server calls this as its shutdown begins, so that gRPC takes no new work while HTTP drains."""
    server = getattr(app.state, "grpc_server", None)
    if server is not None and app.state.grpc_stopping is None:
        app.state.grpc_stopping = asyncio.ensure_future(server.stop(app.state.config.timeout_s))
    return app.state.grpc_stopping if server is not None else None


def _install_error_handlers(app) -> None:
    """Every error as ``{"error": message}``: ours, the runtime's, routing (404/405), validation, and
    anything unexpected (500, logged with its traceback)."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(HttpError)
    async def http_error(request, exc: HttpError):
        if exc.status == 500:
            return server_fault(request, str(exc))
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(EdgesegError)
    async def edgeseg_error(request, exc: EdgesegError):
        if isinstance(exc, BackendError):  # the served model failed, not the request: the server's fault
            return server_fault(request, str(exc))
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request, exc: StarletteHTTPException):
        # unknown routes and wrong methods: the KServe error body, not FastAPI's {"detail": ...}
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 404:
            message = f"no route {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(fastapi.exceptions.RequestValidationError)
    async def validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        return JSONResponse({"error": f"bad request: {first.get('msg', 'invalid')} at {first.get('loc')}"},
                            status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        # reached only by a failure outside the counting middleware (which answers the others);
        # Starlette re-raises it after this answer and uvicorn logs it, so it is not logged here
        return server_fault(request, f"{type(exc).__name__}: {exc}", logged=True)


def _encoded(model: ServedModel, decoded, result) -> tuple[bytes, dict[str, str]]:
    """The response body and headers of one request's rows (post-processed by its model)."""
    return encode_response(model.name, "1", decoded, {model.output_name: model.output(decoded.inputs, result)},
                           model.response_parameters())


_MODEL_ROUTE = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?(?:/(infer|ready|config|stats))?")
_REPOSITORY_ROUTE = re.compile(r"/v2/repository/(?:index|models/[^/]+/(load|unload))")


def _endpoint_label(path: str) -> str:
    """A bounded label set for metrics: the route shape, never the raw path; ``other`` for a
    path no route serves."""
    if path == "/v2/models/stats":
        return "model_stats"
    if (match := _MODEL_ROUTE.fullmatch(path)) is not None:
        return f"model_{match.group(1) or 'metadata'}"
    if (match := _REPOSITORY_ROUTE.fullmatch(path)) is not None:
        return f"repository_{match.group(1) or 'index'}"
    return {"/v2": "server_metadata", "/v2/health/live": "live", "/v2/health/ready": "ready",
            "/v1/segment": "segment", "/metrics": "metrics"}.get(path, "other")
