"""``edgeseg serve --grpc-port`` as its own process, and raw KServe v2 gRPC calls to it."""

from __future__ import annotations

import contextlib

import pytest

from tests.ports import reserved_port


@contextlib.contextmanager
def grpc_serve_process(serve_process, bundle, *options: str, stderr=None):
    """``edgeseg serve BUNDLE --grpc-port P OPTIONS`` once ready; yields (process, HTTP port, gRPC port)."""
    grpc_port = reserved_port()
    kwargs = {} if stderr is None else {"stderr": stderr}
    with serve_process(bundle, "--grpc-port", str(grpc_port), *options, **kwargs) as (proc, port):
        yield proc, port, grpc_port


def stub(grpc_port: int):
    """A GRPCInferenceService stub on 127.0.0.1:``grpc_port`` and the message module."""
    grpc = pytest.importorskip("grpc")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1),
                                                                       ("grpc.max_receive_message_length", -1)])
    return service_pb2_grpc.GRPCInferenceServiceStub(channel), service_pb2


def refusal(call, request) -> tuple[str, str]:
    """(status code name, details) of an RPC that must fail."""
    import grpc

    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=120)
    return caught.value.code().name, caught.value.details()
