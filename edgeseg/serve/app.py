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
import json
import logging
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from edgeseg import __version__
from edgeseg.errors import BackendError, EdgesegError, require
from edgeseg.serve.client_gone import first_of
from edgeseg.serve.counting import CountAnswers
from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.http_errors import CLIENT_CLOSED, HttpError, hold, refused, server_fault, submitted
from edgeseg.serve.inflight import ByteBudget
from edgeseg.serve.metrics import ServerMetrics
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


def create_app(segmenter, config: ServeConfig = ServeConfig(), audit=None):
    """A FastAPI app serving ``segmenter`` (an ``edgeseg.runtime.Segmenter``) under ``config``;
    each request is answered with its ``X-Request-ID`` and, given ``audit`` (an
    ``edgeseg.serve.audit.AuditLog``), logged there as one line. The app starts worker threads
    (one per model and one for uploads) that its lifespan shutdown stops; where its lifespan
    does not run, stop them with :func:`close_app`."""
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool

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
    # Decoding a JSON body and encoding a JSON answer take seconds for large tensors: in a thread,
    # so the event loop answers health checks and other requests meanwhile; one at a time, so at
    # most one body's worth of Python objects lives at once, as when they ran on the loop.
    codec = asyncio.Semaphore(1)
    bodies = BodyReader(config.max_body_bytes, config.timeout_s)

    def model_for(name: str, version: str | None = None) -> ServedModel:
        if name not in models:
            raise HttpError(404, f"unknown model {name!r}; this server serves {sorted(models)}")
        if version not in (None, "", "1"):
            raise HttpError(404, f"model {name!r} has no version {version!r}; it has version '1'")
        return models[name]

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
        return _triton_config(model_for(name, version))

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
            async with codec:
                decoded = await run_in_threadpool(decode_request, body, request.headers.get(HEADER_LENGTH))
        except ProtocolError as exc:
            raise HttpError(400, str(exc)) from None
        if decoded.outputs is not None and set(decoded.outputs) - {model.output_name}:
            raise HttpError(400, f"model {name!r} has one output {model.output_name!r}, asked for {decoded.outputs}")
        # refused before it is queued, as Triton refuses a request it cannot take (a malformed
        # one, a full queue): answered, but not a failed inference of the model
        array = model.checked(decoded.inputs)  # a DataError naming the problem becomes a 400
        with budget.holding(f"a request to model {name!r}") as held:
            hold(held, array.nbytes)
            queued = time.perf_counter_ns()
            ticket = submitted(model.batcher.submit, array)
            ok = False
            try:
                result = await _result(ticket, config.timeout_s, request.receive)
                answered = time.perf_counter_ns()
                async with codec:
                    payload, headers = await run_in_threadpool(_encoded, model, decoded, result)
                ok = True
            finally:
                end = time.perf_counter_ns()
                if ok:
                    model.stats.record_success(end - start, int(array.shape[0]), queue=ticket.queue_ns,
                                               compute_input=queued - start, compute_infer=ticket.infer_ns,
                                               compute_output=end - answered)
                else:
                    model.stats.record_failure(end - start)
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
    yield
    close_app(app)


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


async def _result(ticket: Future, timeout_s: float, receive):
    """The result of a request queued for the model: 504 (and the request dropped, where its batch
    has not started) when it is not done within ``timeout_s`` of being queued; 499 (dropped too)
    when its client left before its batch started. Once started, a batch runs to its end."""
    waiter = asyncio.wrap_future(ticket)
    deadline = time.monotonic() + timeout_s
    if await first_of(waiter, receive, timeout_s) == "gone" and ticket.cancel():
        raise HttpError(CLIENT_CLOSED, "the client closed the connection while its request waited for the model")
    try:  # done, late, or its client left after its batch started (nobody reads its answer)
        return await asyncio.wait_for(waiter, max(0.0, deadline - time.monotonic()))
    except QueueFull as exc:  # the app was closed while the request waited
        raise refused(exc) from None
    except asyncio.TimeoutError:
        ticket.cancel()
        raise HttpError(504, f"inference did not finish within {timeout_s} s") from None


def _triton_config(model: ServedModel) -> dict:
    """The model configuration in the JSON form Triton answers ``/config`` with."""
    meta = model.metadata()

    def tensor(entry: dict, batched: bool) -> dict:
        dims = entry["shape"][1:] if batched else entry["shape"]
        return {"name": entry["name"], "data_type": "TYPE_" + entry["datatype"], "dims": dims}

    batched = meta["platform"] != "edgeseg_pipeline"
    config = {"name": model.name, "platform": meta["platform"], "backend": "edgeseg",
              "max_batch_size": model.max_batch if batched else 0,
              "input": [{**tensor(t, batched), "optional": t.get("optional", False)} for t in meta["inputs"]],
              "output": [tensor(t, batched) for t in meta["outputs"]],
              "dynamic_batching": {"max_queue_delay_microseconds": int(model.batcher.max_delay * 1e6)}}
    if "parameters" in meta:
        # Triton's parameters are strings: text as it is, anything else as JSON (not Python's repr)
        config["parameters"] = {key: {"string_value": value if isinstance(value, str) else json.dumps(value)}
                                for key, value in meta["parameters"].items()}
    return config


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
