"""The remote runner over KServe v2 gRPC: ``grpc://HOST:PORT/models/NAME`` (``edgeseg serve
--grpc-port``, Triton's gRPC port).

Everything but the transport is the HTTP runner's (``edgeseg.runtime.runners.remote``): the
model's tensors are checked against the bundle from ``ModelMetadata``; its classes, model file
and batch limit (where the server says them) from the parameters of ``ModelConfig``, which
``edgeseg serve`` fills as it fills its HTTP metadata's; each batch goes as FP32 in
``raw_input_contents`` and the logits come back in ``raw_output_contents``, with the response's
parameters saying what ran. The messages are those tritonclient.grpc ships (edgeseg[grpc]).
"""

from __future__ import annotations

import json

import numpy as np

from edgeseg.errors import BackendError
from edgeseg.runtime.runners.remote import _FLOATS, _PATH, RemoteRunner

_PURPOSE = "the remote backend grpc://HOST:PORT/models/NAME"
# parameters ``edgeseg serve`` sends as JSON text in ModelConfig (Triton's parameters are strings)
_JSON_PARAMETERS = ("labels", "max_batch")


class GrpcRemoteRunner(RemoteRunner):
    """:class:`RemoteRunner` speaking KServe v2 gRPC; the same arguments, ``url`` a ``grpc://`` one."""

    library, extra, distributions = "grpc", "grpc", ("grpcio",)

    def __init__(self, url: str, *args, **kwargs) -> None:
        self._channel = self._stub = None
        self._reached = False  # whether the server has answered once (UNAVAILABLE then is not "cannot reach")
        super().__init__(url, *args, **kwargs)

    @classmethod
    def _modules(cls):
        """(grpc, the messages, the service stub) or one MissingDependencyError: grpc first, as
        tritonclient's generated modules import it (its absence would be blamed on tritonclient)."""
        grpc = cls.import_library(_PURPOSE)
        return (grpc, cls.import_library(_PURPOSE, "tritonclient.grpc.service_pb2"),
                cls.import_library(_PURPOSE, "tritonclient.grpc.service_pb2_grpc"))

    def _call(self, method: str, request):
        """One RPC on the channel (opened on the first); BackendError, one line, for its failure."""
        grpc, _, pb_grpc = self._modules()
        if self._stub is None:
            # the logits of a batch exceed gRPC's default 4 MB; the request limit is the server's
            self._channel = grpc.insecure_channel(self.device, options=[
                ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
            self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        try:
            answer = getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            code, details = exc.code(), " ".join((exc.details() or "").split())[:300]
            if code == grpc.StatusCode.DEADLINE_EXCEEDED and details in ("", "Deadline Exceeded"):
                raise BackendError(f"remote grpc://{self.device}: no answer within {self._timeout:g} s "
                                   "(the remote backend's timeout)") from None
            if code == grpc.StatusCode.UNAVAILABLE and not self._reached:
                raise BackendError(f"remote: cannot reach grpc://{self.device} ({details})") from None
            raise BackendError(f"remote {self.device}{self._prefix}: gRPC {code.name}: {details}") from None
        self._reached = True
        return answer

    def _model(self) -> tuple[str, str]:
        match = _PATH.match(self._prefix)
        return match["model"], match["version"] or ""

    def _metadata(self) -> dict:
        _, pb, _ = self._modules()
        name, version = self._model()
        meta = self._call("ModelMetadata", pb.ModelMetadataRequest(name=name, version=version))

        def tensors(entries) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": [int(n) for n in t.shape]} for t in entries]

        return {"name": meta.name, "inputs": tensors(meta.inputs), "outputs": tensors(meta.outputs),
                "parameters": self._config_parameters(pb, name, version)}

    def _config_parameters(self, pb, name: str, version: str) -> dict | None:
        """The parameters of the model's configuration (None where the server has no ModelConfig, an
        extension of Triton's), with its ``max_batch_size`` as ``max_batch`` where none is given."""
        try:
            config = self._call("ModelConfig", pb.ModelConfigRequest(name=name, version=version)).config
        except BackendError as exc:
            if "gRPC UNIMPLEMENTED" in str(exc):
                return None
            raise
        parameters: dict = {}
        for key, value in config.parameters.items():
            text = value.string_value
            try:
                parameters[key] = json.loads(text) if key in _JSON_PARAMETERS else text
            except (ValueError, RecursionError):
                parameters[key] = text  # not what edgeseg serve sends: the identity checks skip it
        if "max_batch" not in parameters and config.max_batch_size > 0:
            parameters["max_batch"] = int(config.max_batch_size)  # Triton refuses larger batches
        return parameters

    def _send(self, batch: np.ndarray) -> np.ndarray:
        _, pb, _ = self._modules()
        name, version = self._model()
        request = pb.ModelInferRequest(model_name=name, model_version=version)
        request.inputs.add(name=self.input_info.name, datatype="FP32", shape=list(batch.shape))
        request.outputs.add(name=self.output_info.name)
        request.raw_input_contents.append(batch.astype("<f4", copy=False).tobytes())
        response = self._call("ModelInfer", request)
        found = [i for i, out in enumerate(response.outputs) if out.name == self.output_info.name]
        if len(found) != 1 or response.outputs[found[0]].datatype not in _FLOATS:
            raise BackendError(f"remote {self.device}: the response holds no float {self.output_info.name!r} output")
        out = response.outputs[found[0]]
        dtype, shape = _FLOATS[out.datatype], tuple(int(n) for n in out.shape)
        self._check_shape(shape, batch.shape[0])
        self._note_served({key: getattr(p, p.WhichOneof("parameter_choice") or "string_param")
                           for key, p in response.parameters.items()})
        count = int(np.prod(shape))
        if len(response.raw_output_contents) > found[0]:
            raw = response.raw_output_contents[found[0]]
            if len(raw) != count * dtype.itemsize:
                raise BackendError(f"remote {self.device}: raw logits of {len(raw)} bytes do not fit shape {list(shape)}")
            logits = np.frombuffer(raw, dtype=dtype).reshape(shape)
        elif out.datatype == "FP32" and len(out.contents.fp32_contents) == count:
            logits = np.asarray(out.contents.fp32_contents, dtype=np.float32).reshape(shape)
        else:
            raise BackendError(f"remote {self.device}: the response's logits do not fit shape {list(shape)}")
        return self._check_finite(logits)

    def _release(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
