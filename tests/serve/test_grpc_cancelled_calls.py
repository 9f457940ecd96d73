"""gRPC calls that end without an answer, on a real server (uvicorn with the gRPC service on its
loop): a call cancelled while its values are decoded keeps the one-at-a-time decode turn until
its decoding has ended."""

from __future__ import annotations

import threading

import pytest

from tests.ports import reserved_port
from tests.serve.grpc_util import stub
from tests.serve.test_http_connections import _wait_for

pytest.importorskip("fastapi")
pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")


def _hu(pb, slices: int):
    request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    request.inputs.add(name="hu", datatype="INT16", shape=[slices, 64, 64])
    request.inputs[0].contents.int_contents.extend([0] * (slices * 64 * 64))
    return request


def test_a_call_cancelled_while_decoded_holds_the_decode_turn_until_its_decoding_ends(server_factory):
    """The first call's decoding is held (a decode that takes long: its declared shape's check
    waits for the test) and the call cancelled; a second call, sent then, is not decoded until
    the first's decoding has ended, and so passes its deadline waiting. (A server that let the
    cancelled call's turn go at once decoded the second beside it: under heavy cancelling, any
    number of decodes at once.) Once the first's decoding ends, the turn is free again."""
    import grpc

    grpc_port = reserved_port()
    server = server_factory(grpc_address=f"127.0.0.1:{grpc_port}")
    model = server.app.state.models["edgeseg-pipeline"]
    real_check, entered, release, reached = model.check_shape, threading.Event(), threading.Event(), []

    def held(name, shape):
        reached.append(tuple(shape))
        if len(reached) == 1:
            entered.set()
            assert release.wait(60), "the test never let the first decoding go"
        return real_check(name, shape)

    model.check_shape = held
    service, pb = stub(grpc_port)
    try:
        first = service.ModelInfer.future(_hu(pb, 1), timeout=60)
        assert entered.wait(30), "the first call was never decoded"
        first.cancel()
        with pytest.raises(grpc.RpcError) as caught:
            service.ModelInfer(_hu(pb, 2), timeout=3)
        assert reached == [(1, 64, 64)], "the second call was decoded beside the cancelled one"
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
    _wait_for(lambda: not server.app.state.codec.locked(), "the cancelled call never gave its turn back")
    answer = service.ModelInfer(_hu(pb, 3), timeout=60)
    assert list(answer.outputs[0].shape)[0] == 3 and reached[-1] == (3, 64, 64)
