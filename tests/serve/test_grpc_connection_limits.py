"""The connection and call limits of ``edgeseg serve --grpc-port`` (``edgeseg.serve.grpc_limits``),
each crossed by a real client on 127.0.0.1, and a normal client beside it unaffected. Raw HTTP/2
clients (``tests.serve.http2_raw``) play the hostile ones; the deadlines are generous bounds,
many times the limit under test."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process, refusal, stub
from tests.serve.http2_raw import GOAWAY, HEADERS, closed_within, connect, first_answered, grpc_call, read_frames

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.grpc")

INFER = "/inference.GRPCInferenceService/ModelInfer"
# the limits under --timeout 2: a connection's preface and idleness 2 s, its age 40 s, then 7 s of grace
WITHIN = 30  # s: a bound on the 2 s limits, far beyond them (the old server kept these for 60 s or for good)


def _request(pb):
    request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    request.inputs.add(name="hu", datatype="INT16", shape=[2, 64, 64])
    request.raw_input_contents.append(np.full((2, 64, 64), -1000, np.int16).tobytes())
    return request


def _answered_labels(service, pb) -> np.ndarray:
    answer = service.ModelInfer(_request(pb), timeout=120)
    return np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(2, 64, 64)


def _last_frame_start(frames: bytes) -> int:
    start = 0
    while start + 9 + int.from_bytes(frames[start:start + 3], "big") < len(frames):
        start += 9 + int.from_bytes(frames[start:start + 3], "big")
    return start


@pytest.fixture(scope="module")
def two_calls(serve_bundle, serve_process):
    """A server whose budget holds two of its largest messages: 2 MiB budget, 1 MiB messages;
    (stub, messages, gRPC port)."""
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32", "--max-body-mb", "1",
                            "--max-volume-bytes", str(1 << 20), "--max-inflight-bytes", str(2 << 20)) as (_, _, port):
        yield (*stub(port), port)


@pytest.fixture(scope="module")
def short_timeout(serve_bundle, serve_process):
    """A server on --timeout 2; (stub, messages, gRPC port)."""
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32",
                            "--timeout", "2") as (_, _, port):
        yield (*stub(port), port)


def test_calls_beyond_what_the_budget_holds_are_refused_before_their_message(two_calls):
    """Three clients stop sending before the last frame of their messages, where the budget
    holds two: one of them is refused RESOURCE_EXHAUSTED at once, before its message is whole
    (grpcio 1.85; the floor, 1.51.1, leaves it waiting in gRPC until a place frees), and so is any
    call after them, ServerLive included; the old server took any number, each message held
    whole. The held calls, once sent whole, are answered: the two that were taken. A call after
    them is answered. Only the held calls take places while they are counted (a probe answered
    may keep its place a moment longer in the server), so which of the three is refused depends
    on the order the server reads them, not how many."""
    import grpc

    service, pb, port = two_calls
    refuses = tuple(int(n) for n in grpc.__version__.split(".")[:2]) >= (1, 85)
    call = grpc_call(1, INFER, _request(pb).SerializeToString(), port)
    cut = _last_frame_start(call)  # frames stay whole: SETTINGS are acknowledged while the calls are held
    held = [connect(port) for _ in range(3)]
    for sock in held:
        sock.sendall(call[:cut])
    statuses = ["OK"] * len(held)
    if refuses:
        first, frames = first_answered(held, 120)
        assert first is not None, "none of three calls refused where the budget holds two"
        assert b"grpc-status\x018" in frames[-1][3] and b"Concurrent RPC limit exceeded!" in frames[-1][3], frames
        statuses[first] = "refused"
        for probe in (service.ServerLive, service.ModelInfer):
            request = pb.ServerLiveRequest() if probe is service.ServerLive else _request(pb)
            assert refusal(probe, request) == ("RESOURCE_EXHAUSTED", "Concurrent RPC limit exceeded!")
    else:
        assert refusal(lambda request, timeout: service.ServerLive(request, timeout=10),
                       pb.ServerLiveRequest())[0] == "DEADLINE_EXCEEDED"
    for index, sock in enumerate(held):
        if statuses[index] == "OK":
            sock.sendall(call[cut:])
            trailers = [f[3] for f in read_frames(sock, 120, until_answered=True) if f is not None and f[0] == HEADERS]
            statuses[index] = "OK" if trailers and b"grpc-status\x010" in trailers[-1] else "refused"  # HPACK literals
        sock.close()
    assert statuses.count("OK") == (2 if refuses else 3), statuses
    assert not _answered_labels(service, pb).any()  # air: background everywhere


@pytest.mark.parametrize("sent", [b"", b"PRI * HTTP/2.0\r\n"], ids=["nothing", "half a preface"])
def test_a_connection_that_never_finishes_its_preface_is_closed(short_timeout, sent):
    service, pb, port = short_timeout
    sock = connect(port, preface=False)
    sock.sendall(sent)
    assert closed_within(sock, WITHIN), f"still open {WITHIN} s after its preface was due (--timeout 2)"
    assert not _answered_labels(service, pb).any()


def test_an_idle_connection_is_sent_goaway_and_closed_and_a_client_reconnects(short_timeout):
    """A connection that answers SETTINGS and PINGs but makes no call is sent GOAWAY and closed;
    a tritonclient.grpc client idle as long gets its next answer (gRPC reconnects)."""
    import tritonclient.grpc as triton

    service, pb, port = short_timeout
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live()
    frames = read_frames(connect(port), WITHIN)
    assert frames and frames[-1] is None, f"still open {WITHIN} s after its last call (--timeout 2)"
    assert any(f[0] == GOAWAY for f in frames[:-1])
    hu = triton.InferInput("hu", [2, 64, 64], "INT16")
    hu.set_data_from_numpy(np.full((2, 64, 64), -1000, np.int16))
    labels = client.infer("edgeseg-pipeline", [hu], client_timeout=120).as_numpy("labels")
    assert labels.shape == (2, 64, 64) and not labels.any()
    client.close()


def test_a_client_that_never_reads_its_answer_is_closed(short_timeout):
    """A client answering SETTINGS and PINGs but granting the server no window for its answer:
    the connection ends at its age (40 s under --timeout 2) and grace; the old server kept it."""
    service, pb, port = short_timeout
    sock = connect(port, receive_window=0)
    sock.sendall(grpc_call(1, INFER, _request(pb).SerializeToString(), port))
    frames = read_frames(sock, 300)
    assert frames and frames[-1] is None, "still open after 300 s"
    assert not any(f[0] == 0x0 and f[2] == 1 for f in frames[:-1])  # no byte of the answer was sent
    assert not _answered_labels(service, pb).any()
