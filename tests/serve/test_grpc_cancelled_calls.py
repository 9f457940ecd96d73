"""gRPC calls that end without an answer, on a real server (uvicorn with the gRPC service on its
loop): a call cancelled while its values are decoded keeps the one-at-a-time decode turn until
its decoding has ended, and a call its client cancels, or whose deadline passes, is an audit line
with that status."""

from __future__ import annotations

import json
import threading
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


def test_cancelled_and_late_calls_are_audit_lines(server_factory, gate_model, tmp_path):
    """Two gRPC calls wait in the queue behind an HTTP request held in the model: one's deadline
    passes there, the other's client cancels it; each is a ``grpc_request`` line."""
    import grpc

    from edgeseg.serve.audit import AuditLog

    log = tmp_path / "audit.jsonl"
    grpc_port = reserved_port()
    server = server_factory(max_batch=4, grpc_address=f"127.0.0.1:{grpc_port}", audit=AuditLog(log))
    entered, release = gate_model(server)
    model = server.app.state.models["edgeseg"]
    service, pb = stub(grpc_port)
    image = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="edgeseg")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 64, 64])
    request.raw_input_contents.append(image.tobytes())
    body = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32",
                                   "data": image.ravel().tolist()}]}).encode()

    def statuses() -> list[str]:
        lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return [line["status"] for line in lines if line["event"] == "grpc_request"]

    with ThreadPoolExecutor(1) as pool:
        try:
            held = pool.submit(http_request, server.url, "POST", "/v2/models/edgeseg/infer", body)
            assert entered.wait(30), "the HTTP request never reached the model"
            late = service.ModelInfer.future(request, timeout=2, metadata=(("x-request-id", "late"),))
            with pytest.raises(grpc.RpcError) as caught:
                late.result(timeout=60)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_for(lambda: len(statuses()) == 1, "the late call's line")
            assert statuses() == ["DEADLINE_EXCEEDED"]
            _wait_for(lambda: model.batcher.depth == 0, "the late request stayed in the queue")
            cancelled = service.ModelInfer.future(request, timeout=60, metadata=(("x-request-id", "gone"),))
            _wait_for(lambda: model.batcher.depth == 1, "the second call never reached the queue")
            cancelled.cancel()
            _wait_for(lambda: len(statuses()) == 2, "the cancelled call's line")
            assert statuses() == ["DEADLINE_EXCEEDED", "CANCELLED"]
        finally:
            release.set()
        assert held.result(timeout=30)[0] == 200
    lines = [json.loads(line) for line in log.read_text().splitlines() if '"grpc_request"' in line]
    assert [(line["request_id"], line["method"], line["model"], line["outcome"]) for line in lines] == [
        ("late", "ModelInfer", "edgeseg", "error"), ("gone", "ModelInfer", "edgeseg", "error")]
