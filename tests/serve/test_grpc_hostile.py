"""Hostile requests to ``edgeseg serve --grpc-port``: each is refused with a one-line message and
the gRPC status that fits it, before the model runs, and the server keeps serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.serve.grpc_util import grpc_serve_process, refusal, stub

pytest.importorskip("grpc")
pytest.importorskip("fastapi")
pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def server(serve_bundle, serve_process):
    """A server whose largest request is 1 MB (--max-body-mb 1); (stub, messages)."""
    with grpc_serve_process(serve_process, serve_bundle, "--backend", "onnxruntime:fp32",
                            "--max-body-mb", "1") as (_, _, grpc_port):
        yield stub(grpc_port)


def _request(pb, model="edgeseg-pipeline", inputs=(("hu", "INT16", (2, 64, 64)),), raw=None):
    """A ModelInferRequest with ``inputs`` (name, datatype, shape), raw contents ``raw`` (default:
    -1000 HU of the right size for each)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, shape in inputs:
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    if raw is None:
        raw = [np.full(shape, -1000, {"INT16": np.int16, "FP16": np.float16, "FP32": np.float32}[datatype]).tobytes()
               for _, datatype, shape in inputs]
    request.raw_input_contents.extend(raw)
    return request


def _typed(pb):
    request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    tensor = request.inputs.add(name="hu", datatype="INT16", shape=[1, 8, 8])
    tensor.contents.int_contents.extend([-1000] * 63 + [40000])  # beyond INT16
    return request


def _spacing_only(pb):
    request = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    request.inputs.add(name="spacing", datatype="FP32", shape=[3]).contents.fp32_contents.extend([1, 1, 1])
    return request


CASES = {
    "wrong shape": (lambda pb: _request(pb, inputs=[("hu", "INT16", (1, 1, 64, 64))]),
                    "INVALID_ARGUMENT", "takes hu of shape [H, W] or [N, H, W], got [1, 1, 64, 64]"),
    "wrong datatype": (lambda pb: _request(pb, inputs=[("hu", "FP16", (64, 64))]),
                       "INVALID_ARGUMENT", "takes hu as one of ['INT16', 'UINT16', 'FP32'], got FP16"),
    "unknown datatype": (lambda pb: _request(pb, inputs=[("hu", "INT4", (64, 64))], raw=[b"\0" * 4096]),
                         "INVALID_ARGUMENT", "datatype 'INT4' is not one of"),
    "raw byte count": (lambda pb: _request(pb, raw=[b"\0" * 100]),
                       "INVALID_ARGUMENT", "raw_input_contents holds 100 bytes; shape [2, 64, 64] of INT16 needs 16384"),
    "lying shape": (lambda pb: _request(pb, inputs=[("hu", "INT16", (1 << 40, 1 << 40))], raw=[b"\0" * 8]),
                    "INVALID_ARGUMENT", "raw_input_contents holds 8 bytes"),
    "typed value out of range": (_typed, "INVALID_ARGUMENT", "outside the range of INT16"),
    "unknown model": (lambda pb: _request(pb, model="nope"), "NOT_FOUND", "unknown model 'nope'"),
    "unknown version": (lambda pb: _request(pb).__class__(model_name="edgeseg", model_version="7"),
                        "NOT_FOUND", "has no version '7'"),
    "oversize message": (lambda pb: _request(pb, inputs=[("hu", "INT16", (1, 1024, 1024))]),
                         "RESOURCE_EXHAUSTED", "larger than max"),
    "missing input": (_spacing_only, "INVALID_ARGUMENT", "takes one input 'hu', optional 'spacing', got ['spacing']"),
    "no input": (lambda pb: pb.ModelInferRequest(model_name="edgeseg-pipeline"),
                 "INVALID_ARGUMENT", "request needs at least one input"),
    "raw for some inputs": (lambda pb: _request(pb, inputs=[("hu", "INT16", (64, 64)), ("spacing", "FP32", (3,))],
                                                raw=[b"\0" * 8192]),
                            "INVALID_ARGUMENT", "raw_input_contents holds 1 tensors for 2 inputs"),
    "input twice": (lambda pb: _request(pb, inputs=[("hu", "INT16", (64, 64))] * 2),
                    "INVALID_ARGUMENT", "input 'hu' is given twice"),
    "unknown output": (lambda pb: _with_output(_request(pb), "logits"),
                       "INVALID_ARGUMENT", "has one output 'labels', asked for ['logits']"),
    "HU to the network": (lambda pb: _request(pb, model="edgeseg", inputs=[("image", "INT16", (1, 1, 64, 64))]),
                          "INVALID_ARGUMENT", "takes the pre-processed FP32 tensor, got INT16"),
}


def _with_output(request, name):
    request.outputs.add(name=name)
    return request


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_request_is_refused_in_one_line_and_the_server_keeps_serving(server, case):
    service, pb = server
    make, code, fragment = CASES[case]
    got_code, details = refusal(service.ModelInfer, make(pb))
    assert got_code == code, details
    assert fragment in details and "\n" not in details and "Traceback" not in details, details
    answer = service.ModelInfer(_request(pb), timeout=120)  # a good request right after
    labels = np.frombuffer(answer.raw_output_contents[0], np.uint8).reshape(2, 64, 64)
    assert list(answer.outputs[0].shape) == [2, 64, 64] and not labels.any()  # air everywhere: background


def test_unknown_model_metadata_and_unimplemented_rpcs(server):
    service, pb = server
    code, details = refusal(service.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
    assert code == "NOT_FOUND" and "unknown model 'nope'; this server serves" in details
    code, details = refusal(service.RepositoryIndex, pb.RepositoryIndexRequest())
    assert code == "UNIMPLEMENTED" and "does not implement RepositoryIndex" in details
    assert service.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_typed_contents_give_the_labels_of_raw_contents(server):
    """The same HU (a slice of the dcmqi series at half resolution, within the 1 MB limit even as
    int_contents' varints) sent in int_contents and in raw_input_contents: the same labels."""
    from edgeseg.data.dicom import read_dicom_series

    service, pb = server
    series = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
    hu = np.ascontiguousarray(read_dicom_series(series).hu[1:2, ::2, ::2].astype(np.int16))
    raw = _request(pb, inputs=[("hu", "INT16", hu.shape)], raw=[hu.tobytes()])
    typed = pb.ModelInferRequest(model_name="edgeseg-pipeline")
    typed.inputs.add(name="hu", datatype="INT16", shape=list(hu.shape)).contents.int_contents.extend(hu.ravel().tolist())
    labels = [np.frombuffer(service.ModelInfer(r, timeout=120).raw_output_contents[0], np.uint8) for r in (raw, typed)]
    assert labels[0].any(), "nothing found: the comparison would be of two empty masks"
    assert np.array_equal(labels[0], labels[1])
