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
import time

from edgeseg import __version__
from edgeseg.errors import BackendError, DataError, EdgesegError, require
from edgeseg.serve.audit import request_id
from edgeseg.serve.grpc_tensors import decode_infer_request, encode_infer_response
from edgeseg.serve.http_errors import HttpError
from edgeseg.serve.model_call import find_model, run_request, triton_config
from edgeseg.serve.protocol import ProtocolError

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


def _answered(method):
    """Run an RPC, turning a refusal into its gRPC status and one-line details."""

    @functools.wraps(method)
    async def rpc(self, request, context):
        import grpc

        try:
            return await method(self, request, context)
        except HttpError as exc:
            if exc.status >= 500 and exc.status not in _STATUS:
                code, details = grpc.StatusCode.INTERNAL, self._fault(context, str(exc), None)
            else:
                code, details = getattr(grpc.StatusCode, _STATUS.get(exc.status, "INVALID_ARGUMENT")), str(exc)
        except (ProtocolError, DataError) as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except BackendError as exc:  # the served model failed, not the request: the server's fault
            code, details = grpc.StatusCode.INTERNAL, self._fault(context, str(exc), None)
        except EdgesegError as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, answered INTERNAL
            code, details = grpc.StatusCode.INTERNAL, self._fault(context, f"{type(exc).__name__}: {exc}", exc)
        await context.abort(code, " ".join(details.split()))

    return rpc


class InferenceService:
    """``inference.GRPCInferenceService`` over the models of the HTTP app ``app``."""

    def __init__(self, app, pb) -> None:
        self.pb = pb
        self.models, self.budget, self.config = app.state.models, app.state.budget, app.state.config

    def _fault(self, context, text: str, exc: BaseException | None) -> str:
        """Log a failure of the server under a new request ID; the details the client gets."""
        rid = request_id(None)
        log.error("gRPC %s (request %s) failed: %s", context.peer(), rid, " ".join(text.split()),
                  exc_info=exc)
        return f"internal server error; the server's log has the details under request ID {rid}"

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
        decoded = await asyncio.to_thread(decode_infer_request, request)

        def encode(result):
            outputs = {model.output_name: model.output(decoded.inputs, result)}
            return encode_infer_response(self.pb, model.name, decoded, outputs, model.response_parameters())

        async def encoded(result):
            return await asyncio.to_thread(encode, result)

        # a client that cancels (or whose deadline passes) cancels this task, and so its queued request
        return await run_request(model, decoded, self.budget, self.config.timeout_s, start, encoded)


def _unimplemented(name: str):
    async def rpc(self, request, context):
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"edgeseg serve does not implement {name}; it serves {', '.join(SERVED)}")

    rpc.__name__ = name
    return rpc


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
    largest message is the app's request body limit. DataError where the address cannot be bound."""
    grpc = require("grpc", "grpc", PURPOSE)
    pb, service = stubs()
    options = [("grpc.max_receive_message_length", app.state.config.max_body_bytes),
               ("grpc.max_send_message_length", -1),
               # a second server on a port held already must fail, not share it
               ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=options)
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
