"""Typed ``contents`` of ``edgeseg serve --grpc-port``: the declared shape is checked against the
server's limits before any value is decoded, values are decoded one request at a time (the HTTP
infer route's decode lock) straight into numpy, and a request may not carry both raw and typed
values."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process, refusal, stub

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def server(serve_bundle, serve_process):
    """A server on its default limits; (process, stub, messages, gRPC port)."""
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32") as (proc, _, grpc_port):
        yield (proc, *stub(grpc_port), grpc_port)


def _typed(pb, model: str, name: str, datatype: str, shape, values, field: str):
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize(("model", "name", "datatype", "shape", "field", "code", "message"), [
    ("edgeseg", "image", "FP32", (3900, 1, 64, 64), "fp32_contents", "INVALID_ARGUMENT",
     "a request holds at most 8 slices (--max-batch), got 3900"),
    ("edgeseg-pipeline", "hu", "INT16", (1, 5000, 64), "int_contents", "INVALID_ARGUMENT",
     "slices of 5000x64 exceed the server's limit of 4096 pixels a side"),
    ("edgeseg-pipeline", "hu", "INT16", (9, 64, 64), "int_contents", "INVALID_ARGUMENT",
     "a request holds 1..8 slices (--max-batch), got 9"),
    ("edgeseg", "image", "FP32", (1, 1, 1 << 20, 1 << 20), "fp32_contents", "RESOURCE_EXHAUSTED",
     "more than the whole in-flight budget"),
])
def test_a_declared_shape_beyond_the_limits_is_refused_before_its_values_are_read(
        server, model, name, datatype, shape, field, code, message):
    """One value sent: a server that read the values first would say they do not fill the shape."""
    _, service, pb, _ = server
    got = refusal(service.ModelInfer, _typed(pb, model, name, datatype, shape, [0], field))
    assert got[0] == code and message in got[1] and "\n" not in got[1], got


def test_typed_values_decode_as_the_raw_ones(server):
    """INT16 HU in int_contents: the labels of the same slice sent raw; values beyond INT16 refused."""
    _, service, pb, _ = server
    hu = np.random.default_rng(3).integers(-1000, 400, (2, 64, 64)).astype(np.int16)
    typed = service.ModelInfer(_typed(pb, "edgeseg-pipeline", "hu", "INT16", hu.shape, hu.ravel().tolist(),
                                      "int_contents"), timeout=120)
    raw = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    raw.inputs.add(name="hu", datatype="INT16", shape=list(hu.shape))
    raw.raw_input_contents.append(hu.tobytes())
    assert typed.raw_output_contents[0] == service.ModelInfer(raw, timeout=120).raw_output_contents[0]
    got = refusal(service.ModelInfer, _typed(pb, "edgeseg-pipeline", "hu", "INT16", (1, 2), [-1000, 40000],
                                             "int_contents"))
    assert got == ("INVALID_ARGUMENT", "input 'hu': a value lies outside the range of INT16 (-32768..32767)")


def test_raw_and_typed_contents_in_one_request_are_refused(server):
    _, service, pb, _ = server
    request = _typed(pb, "edgeseg-pipeline", "hu", "INT16", (64, 64), [0] * 4096, "int_contents")
    request.raw_input_contents.append(np.zeros((64, 64), np.int16).tobytes())
    code, details = refusal(service.ModelInfer, request)
    assert code == "INVALID_ARGUMENT"
    assert details == ("the request holds both raw_input_contents and typed contents; "
                       "send each input in one of them")


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _python_protobuf() -> bool:
    from google.protobuf.internal import api_implementation

    return api_implementation.Type() == "python"


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc/PID/status")
@pytest.mark.skipif(_python_protobuf(), reason="protobuf's pure-Python implementation (protobuf 3.x on Python 3.11) "
                                               "holds a parsed message's typed values as Python objects itself")
def test_concurrent_typed_requests_keep_the_server_memory_bounded(server):
    """Four requests at once, each 8 slices of 1024x1024 FP32 in fp32_contents (32 MiB of message,
    within every limit); the values are NaN, so each is refused once decoded, before the model runs. A server decoding them all at once through a
    Python list of every value grows by about 1.4 GiB; one decoding each at a time into numpy by
    the messages and one array. The bound is generous."""
    import grpc

    proc, _, pb, grpc_port = server
    shape = (8, 1024, 1024)
    request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    request.inputs.add(name="hu", datatype="FP32", shape=list(shape))
    request.inputs[0].contents.fp32_contents.extend(np.full(int(np.prod(shape)), np.nan, np.float32))
    message = request.SerializeToString()
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1),
                                                                          ("grpc.max_receive_message_length", -1)])
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", request_serializer=None,
                               response_deserializer=pb.ModelInferResponse.FromString)
    before = _peak_rss_kib(proc.pid)
    answers: list = []

    def send() -> None:
        try:
            call(message, timeout=300)
            answers.append("OK")
        except grpc.RpcError as exc:
            answers.append((exc.code().name, exc.details()))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()
    grown_mib = (_peak_rss_kib(proc.pid) - before) / 1024
    assert len(answers) == 4 and all(a[0] == "INVALID_ARGUMENT" for a in answers), answers
    assert grown_mib < 1000, f"the server grew by {grown_mib:.0f} MiB for four 32 MiB requests"
