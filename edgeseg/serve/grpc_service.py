"""The KServe v2 gRPC service (``inference.GRPCInferenceService``) of ``edgeseg serve --grpc-port``.

It serves the HTTP app's models (``app.state.models``) on the HTTP server's event loop: the same
model objects, micro-batchers, in-flight byte budget and statistics, and the same request path
(``edgeseg.serve.model_call.run_request``). Refusals carry the HTTP side's one-line messages with
the gRPC status that fits them (400: INVALID_ARGUMENT, 404: NOT_FOUND, 413 and an oversized
message: RESOURCE_EXHAUSTED, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED); a failure of the server
itself is INTERNAL naming a request ID under which the log holds the details. The messages are
those ``tritonclient.grpc`` ships (generated from Triton's ``grpc_service.proto``), so the service
is what that client and ``perf_analyzer -i grpc`` speak (docs/serving.md says why).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time

import numpy as np

from edgeseg import __version__
from edgeseg.errors import BackendError, DataError, EdgesegError, require
from edgeseg.serve.audit import AuditLogError, peer_address, request_id
from edgeseg.serve.grpc_limits import server_options
from edgeseg.serve.grpc_tensors import decode_infer_request, encode_infer_response
from edgeseg.serve.http_errors import HttpError, refused
from edgeseg.serve.inflight import BUDGET_OPTION, OverBudget
from edgeseg.serve.model_call import find_model, in_turn, run_request, triton_config
from edgeseg.serve.protocol import DATATYPES, ProtocolError

log = logging.getLogger("edgeseg.serve")
PURPOSE = "edgeseg serve --grpc-port"
EXTENSIONS = ["model_configuration", "statistics"]
# The gRPC status of each HTTP status the shared request path refuses with
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED",
           499: "CANCELLED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def stubs():
    """(messages, service) modules generated from Triton's grpc_service.proto, as tritonclient ships them."""
    require("grpc", "grpc", PURPOSE)
    pb = require("tritonclient.grpc.service_pb2", "grpc", PURPOSE)
    return pb, require("tritonclient.grpc.service_pb2_grpc", "grpc", PURPOSE)


# RPCs a probe sends every few seconds: not audited, as HTTP's /v2/health routes are not
_PROBES = ("ServerLive", "ServerReady")
_SERVICE_PATH = "/inference.GRPCInferenceService/"
_DEADLINE_SLACK_S = 0.25


class _Unimplemented(Exception):
    """An RPC of the service that edgeseg serve does not answer."""


def _answered(method):
    """Run an RPC, turning a refusal into its gRPC status and one-line details; each RPC but the
    probes is recorded in the audit log (where the server keeps one) before it is answered."""

    @functools.wraps(method)
    async def rpc(self, request, context):
        import grpc

        given = dict(context.invocation_metadata() or ()).get("x-request-id")
        rid, start, error = request_id(given if isinstance(given, str) else None), time.perf_counter(), None
        try:
            answer = await method(self, request, context)
            code, details = grpc.StatusCode.OK, ""
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed: nobody to answer
            # a client whose deadline passes cancels the call itself, on its own clock, which runs
            # ahead of the server's by the time the call took to arrive: a call cancelled in the
            # last moment of its time is one that ran out of it
            remaining = context.time_remaining()
            status = "DEADLINE_EXCEEDED" if remaining is not None and remaining < _DEADLINE_SLACK_S else "CANCELLED"
            if self.audit is not None and method.__name__ not in _PROBES:
                try:  # written here, on the loop: an await would be cancelled again
                    self._audit(context, rid, method.__name__, request, status, start, None)
                except AuditLogError as exc:
                    log.error("gRPC request %s (%s) went unrecorded: %s", rid, status, exc.reason)
            raise
        except _Unimplemented as exc:
            code, details = grpc.StatusCode.UNIMPLEMENTED, str(exc)
        except HttpError as exc:
            if exc.status >= 500 and exc.status not in _STATUS:
                code, details, error = grpc.StatusCode.INTERNAL, self._fault(context, rid, str(exc), None), str(exc)
            else:
                code, details = getattr(grpc.StatusCode, _STATUS.get(exc.status, "INVALID_ARGUMENT")), str(exc)
        except (ProtocolError, DataError) as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except BackendError as exc:  # the served model failed, not the request: the server's fault
            code, details, error = grpc.StatusCode.INTERNAL, self._fault(context, rid, str(exc), None), str(exc)
        except EdgesegError as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered INTERNAL
            error = f"{type(exc).__name__}: {exc}"
            code, details = grpc.StatusCode.INTERNAL, self._fault(context, rid, error, exc)
        context.set_trailing_metadata((("x-request-id", rid),))
        if self.audit is not None and method.__name__ not in _PROBES:
            try:
                await asyncio.to_thread(self._audit, context, rid, method.__name__, request, code.name, start, error)
            except AuditLogError as exc:  # an audited server hands out no answer it could not record
                code, details = grpc.StatusCode.INTERNAL, f"the server cannot record the request in its audit log: {exc.reason}"
        if code == grpc.StatusCode.OK:
            return answer
        await context.abort(code, " ".join(details.split()))

    return rpc


class InferenceService:
    """``inference.GRPCInferenceService`` over the models of the HTTP app ``app``."""

    def __init__(self, app, pb) -> None:
        self.pb = pb
        self.models, self.budget, self.config = app.state.models, app.state.budget, app.state.config
        # the HTTP infer route's: one request's values decoded (or answer encoded) at a time
        self.codec, self.audit = app.state.codec, app.state.audit

    def _fault(self, context, rid: str, text: str, exc: BaseException | None) -> str:
        """Log a failure of the server under its request ID; the details the client gets."""
        log.error("gRPC %s (request %s) failed: %s", context.peer(), rid, " ".join(text.split()),
                  exc_info=exc)
        return f"internal server error; the server's log has the details under request ID {rid}"

    def _audit(self, context, rid: str, rpc: str, request, status: str, start: float, error: str | None) -> None:
        """The ``grpc_request`` line of one answered RPC (the fields of HTTP's ``http_request``)."""
        model = getattr(request, "model_name", None) or getattr(request, "name", None) or None
        self.audit.record("grpc_request", request_id=rid, peer=peer_address(context.peer() or ""), method=rpc,
                          path=_SERVICE_PATH + rpc, model=model, status=status,
                          outcome="ok" if status == "OK" else "error",
                          error=None if error is None else " ".join(error.split())[:300],
                          latency_ms=round((time.perf_counter() - start) * 1e3, 3))

    @_answered
    async def ServerLive(self, request, context):  # noqa: N802 - the service's method names
        return self.pb.ServerLiveResponse(live=True)

    @_answered
    async def ServerReady(self, request, context):  # noqa: N802
        return self.pb.ServerReadyResponse(ready=True)

    @_answered
    async def ModelReady(self, request, context):  # noqa: N802
        # as Triton answers it: an unknown model is not ready (HTTP's /ready answers 404)
        ready = request.name in self.models and request.version in ("", "1")
        return self.pb.ModelReadyResponse(ready=ready)

    @_answered
    async def ServerMetadata(self, request, context):  # noqa: N802
        return self.pb.ServerMetadataResponse(name="edgeseg", version=__version__, extensions=EXTENSIONS)

    @_answered
    async def ModelMetadata(self, request, context):  # noqa: N802
        meta = find_model(self.models, request.name, request.version).metadata()

        def tensors(entries):
            return [self.pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"],
                                                                 shape=t["shape"]) for t in entries]

        return self.pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                             inputs=tensors(meta["inputs"]), outputs=tensors(meta["outputs"]))

    @_answered
    async def ModelConfig(self, request, context):  # noqa: N802
        from google.protobuf import json_format

        config = triton_config(find_model(self.models, request.name, request.version))
        message = require("tritonclient.grpc.model_config_pb2", "grpc", PURPOSE).ModelConfig()
        return self.pb.ModelConfigResponse(config=json_format.ParseDict(config, message))

    @_answered
    async def ModelStatistics(self, request, context):  # noqa: N802
        from google.protobuf import json_format

        if request.name:
            chosen = {request.name: find_model(self.models, request.name, request.version)}
        else:
            chosen = self.models
        stats = {"model_stats": [model.stats.to_dict(name) for name, model in chosen.items()]}
        return json_format.ParseDict(stats, self.pb.ModelStatisticsResponse())

    @_answered
    async def ModelInfer(self, request, context):  # noqa: N802
        model = find_model(self.models, request.model_name, request.model_version)
        start = time.perf_counter_ns()

        def declared(name: str, shape: tuple[int, ...], datatype: str) -> None:
            # typed values take far more memory while decoded than their message: the limits the
            # declared shape alone breaks are refused before any value is read
            model.check_shape(name, shape)
            nbytes = math.prod(shape) * np.dtype(DATATYPES[datatype]).itemsize
            if nbytes > self.budget.limit:
                raise refused(OverBudget(f"input {name!r} of shape {list(shape)} needs {nbytes} bytes, more than "
                                         f"the whole in-flight budget of {self.budget.limit} bytes ({BUDGET_OPTION})"))

        decoded = await in_turn(self.codec, decode_infer_request, request, declared)

        def encode(result):
            outputs = {model.output_name: model.output(decoded.inputs, result)}
            return encode_infer_response(self.pb, model.name, decoded, outputs, model.response_parameters())

        async def encoded(result):
            return await in_turn(self.codec, encode, result)

        # a client that cancels (or whose deadline passes) cancels this task, and so its queued request
        return await run_request(model, decoded, self.budget, self.config.timeout_s, start, encoded)


def _unimplemented(name: str):
    async def rpc(self, request, context):
        raise _Unimplemented(f"edgeseg serve does not implement {name}; it serves {', '.join(SERVED)}")

    rpc.__name__ = name
    return _answered(rpc)  # audited, as HTTP audits its 404 and 405 answers


# the RPCs InferenceService answers; the service's others are answered UNIMPLEMENTED
SERVED = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelConfig",
          "ModelStatistics", "ModelInfer")


def _service(service_module):
    """InferenceService with every other method of the generated servicer answering UNIMPLEMENTED
    (the generated defaults are synchronous, which the asyncio server cannot run)."""
    names = [name for name in vars(service_module.GRPCInferenceServiceServicer) if not name.startswith("_")]
    return type("GRPCInferenceService", (InferenceService,),
                {name: _unimplemented(name) for name in names if name not in SERVED})


async def start_grpc_server(app, address: str):
    """A started ``grpc.aio`` server on ``address`` (HOST:PORT) serving ``app``'s models; its
    largest message is the app's request body limit, its other limits those of
    ``edgeseg.serve.grpc_limits``. DataError where the address cannot be bound."""
    grpc = require("grpc", "grpc", PURPOSE)
    pb, service = stubs()
    config = app.state.config
    options, calls = server_options(config.max_body_bytes, app.state.budget.limit, config.timeout_s)
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=calls)
    service.add_GRPCInferenceServiceServicer_to_server(_service(service)(app, pb), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        port, reason = 0, str(exc)
    else:
        reason = "the address is in use or not local"
    if port == 0:
        raise DataError(f"cannot listen for gRPC on {address}: {' '.join(reason.split())}")
    await server.start()
    return server
