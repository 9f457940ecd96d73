"""gRPC calls that wait for the model, on a real server (uvicorn with the gRPC service on its
loop) on 127.0.0.1: one its client cancels is dropped before it reaches the model and counted as
a failure, as an HTTP client that leaves is; those in flight when the server stops are answered."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.ports import reserved_port
from tests.serve.grpc_util import stub
from tests.serve.http_util import http_request
from tests.serve.test_http_connections import _wait_for

pytest.importorskip("fastapi")
pytest.importorskip("grpc")
pytest.importorskip("tritonclient.grpc")


def _tensor() -> np.ndarray:
    return np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)


def test_a_grpc_call_cancelled_while_queued_never_reaches_the_model(server_factory, gate_model):
    grpc_port = reserved_port()
    server = server_factory(max_batch=4, grpc_address=f"127.0.0.1:{grpc_port}")
    entered, release = gate_model(server)
    model = server.app.state.models["edgeseg"]
    service, pb = stub(grpc_port)
    request = pb.ModelInferRequest(model_name="edgeseg")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 64, 64])
    request.raw_input_contents.append(_tensor().tobytes())
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32",
                                   "data": _tensor().ravel().tolist()}]}).encode()
    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", body)
            assert entered.wait(30), "the HTTP request never reached the model"
            call = service.ModelInfer.future(request, timeout=60)
            _wait_for(lambda: model.batcher.depth == 1, "the gRPC request never reached the queue")
            call.cancel()
            _wait_for(lambda: model.batcher.depth == 0, "the cancelled request stayed in the queue")
        finally:
            release.set()
        assert held.result(timeout=30)[0] == 200
    stats = model.stats.to_dict("edgeseg")
    assert stats["inference_count"] == 1  # the held request's slice alone reached the model
    assert stats["inference_stats"]["fail"]["count"] == 1
    answer = service.ModelInfer(request, timeout=60)  # and the service still answers
    assert list(answer.outputs[0].shape)[0] == 1


def _refuses_calls(service, pb) -> bool:
    import grpc

    try:
        service.ServerLive(pb.ServerLiveRequest(), timeout=1)
    except grpc.RpcError:
        return True
    return False


def test_a_grpc_call_in_flight_when_the_server_stops_is_answered(server_factory, gate_model):
    """The server is told to stop (what SIGTERM does to uvicorn) while one gRPC request is in the
    model and another waits in the queue behind it; once the service refuses new calls, the model
    is let go: both calls get their logits (the gRPC server is stopped with a grace period before
    the models' queues are closed, which would refuse the waiting one)."""
    grpc_port = reserved_port()
    server = server_factory(max_batch=4, grpc_address=f"127.0.0.1:{grpc_port}")
    entered, release = gate_model(server)
    service, pb = stub(grpc_port)
    request = pb.ModelInferRequest(model_name="edgeseg")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 64, 64])
    request.raw_input_contents.append(_tensor().tobytes())
    try:
        call = service.ModelInfer.future(request, timeout=60)
        assert entered.wait(30), "the gRPC request never reached the model"
        waiting = service.ModelInfer.future(request, timeout=60)
        _wait_for(lambda: server.app.state.models["edgeseg"].batcher.depth == 1, "the second call never queued")
        server.server.should_exit = True
        _wait_for(lambda: _refuses_calls(service, pb), "the gRPC service never stopped taking calls")
    finally:
        release.set()
    for answer in (call.result(timeout=60), waiting.result(timeout=60)):
        assert list(answer.outputs[0].shape) == [1, 2, 64, 64]
    server.thread.join(30)
    assert not server.thread.is_alive()
