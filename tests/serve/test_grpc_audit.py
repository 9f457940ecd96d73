"""``edgeseg serve --grpc-port --audit-log``: each gRPC call but the health probes is one
``grpc_request`` line with the fields of HTTP's ``http_request`` lines, its request ID echoed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process, stub
from tests.serve.test_audit_log import _bundle_checked

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.grpc")


def test_grpc_calls_are_audit_lines(serve_bundle, serve_process, tmp_path):
    import grpc

    log = tmp_path / "audit.jsonl"
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32",
                            "--audit-log", str(log)) as (_, _, grpc_port):
        service, pb = stub(grpc_port)
        request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
        request.inputs.add(name="hu", datatype="INT16", shape=[32, 32])
        request.raw_input_contents.append(np.zeros((32, 32), np.int16).tobytes())
        _, call = service.ModelInfer.with_call(request, timeout=120, metadata=(("x-request-id", "req-7"),))
        assert dict(call.trailing_metadata())["x-request-id"] == "req-7"
        service.ServerLive(pb.ServerLiveRequest(), timeout=30)  # a probe: not audited
        service.ModelMetadata(pb.ModelMetadataRequest(name="edgeseg"), timeout=30)
        with pytest.raises(grpc.RpcError):
            service.ModelInfer(pb.ModelInferRequest(model_name="nothing"), timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["event"], line["method"], line.get("model"), line["status"], line["outcome"]) for line in lines] == [
        ("grpc_request", "ModelInfer", "edgeseg-pipeline", "OK", "ok"),
        ("grpc_request", "ModelMetadata", "edgeseg", "OK", "ok"),
        ("grpc_request", "ModelInfer", "nothing", "NOT_FOUND", "error")]
    assert lines[0]["request_id"] == "req-7" and len(lines[2]["request_id"]) == 32
    for line in lines:
        assert line["path"] == "/inference.GRPCInferenceService/" + line["method"]
        assert line["peer"].startswith("127.0.0.1:") and line["latency_ms"] >= 0 and line["time"].endswith("Z")
        _bundle_checked(line["bundle"], serve_bundle)


def test_ipv6_peers_and_unimplemented_rpcs_are_audited_as_http_writes_them(server_factory, tmp_path):
    """A server on ::1: the gRPC and HTTP lines write the peer alike, ``[::1]:PORT`` (gRPC's own
    form is ``ipv6:%5B::1%5D:PORT``); an RPC the server does not implement is a line too, as HTTP's
    404 answers are."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    from edgeseg.serve.audit import AuditLog
    from tests.ports import reserved_port
    from tests.serve.http_util import http_request

    log = tmp_path / "audit.jsonl"
    grpc_port = reserved_port()
    server = server_factory(host="::1", grpc_address=f"[::1]:{grpc_port}", audit=AuditLog(log))
    with grpc.insecure_channel(f"[::1]:{grpc_port}") as channel:
        service = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        service.ModelMetadata(service_pb2.ModelMetadataRequest(name="edgeseg"), timeout=30)
        with pytest.raises(grpc.RpcError) as caught:
            service.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.details().startswith("edgeseg serve does not implement RepositoryIndex; it serves")
    assert http_request(server.url, "GET", "/v2/models/nothing")[0] == 404
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(line["event"], line["method"], line["status"]) for line in lines] == [
        ("grpc_request", "ModelMetadata", "OK"), ("grpc_request", "RepositoryIndex", "UNIMPLEMENTED"),
        ("http_request", "GET", 404)]
    for line in lines:
        host, _, port = line["peer"].rpartition(":")
        assert host == "[::1]" and port.isdigit(), line["peer"]
