"""Request parameters of the binary tensor data extension, and what the server refuses rather
than coerces or ignores, on the real server on 127.0.0.1 with raw HTTP requests."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")

NETWORK = "/v2/models/edgeseg/infer"
PIPELINE = "/v2/models/edgeseg-pipeline/infer"


def _post(url, path, doc, headers=None):
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, body=json.dumps(doc).encode(), headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def _image(**extra) -> dict:
    x = np.random.default_rng(0).normal(0.3, 0.4, (1, 1, 64, 64)).astype(np.float32)
    return {"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist(), **extra}


def _hu(datatype="INT16", data=None, **extra) -> dict:
    return {"name": "hu", "datatype": datatype, "shape": [1, 8, 8],
            "data": [-1000] * 64 if data is None else data, **extra}


def _outputs(status, headers, data) -> dict:
    """The response's outputs by name: {'data': list} for JSON, {'binary': bytes} for binary."""
    assert status == 200, data
    length = int(headers.get("inference-header-content-length", len(data)))
    doc, tail = json.loads(data[:length]), data[length:]
    found = {}
    for entry in doc["outputs"]:
        size = entry.get("parameters", {}).get("binary_data_size")
        if size is None:
            found[entry["name"]] = {"data": entry["data"]}
        else:
            found[entry["name"]] = {"binary": tail[:size]}
            tail = tail[size:]
    return found


@pytest.mark.parametrize("everything,this_one,binary", [
    (True, False, False), (False, True, True), (True, None, True), (None, False, False), (False, None, False),
])
def test_an_outputs_binary_data_overrides_binary_data_output(server, everything, this_one, binary):
    doc = {"inputs": [_image()], "outputs": [{"name": "logits"}]}
    if everything is not None:
        doc["parameters"] = {"binary_data_output": everything}
    if this_one is not None:
        doc["outputs"][0]["parameters"] = {"binary_data": this_one}
    logits = _outputs(*_post(server.url, NETWORK, doc))["logits"]
    assert list(logits) == ["binary" if binary else "data"]
    values = np.frombuffer(logits["binary"], "<f4") if binary else np.array(logits["data"], np.float32)
    assert values.size == 2 * 64 * 64 and np.isfinite(values).all()


@pytest.mark.parametrize("path,doc,fragment", [
    (NETWORK, {"inputs": [_image()], "parameters": {"binary_data_output": "false"}},
     "parameter 'binary_data_output' must be true or false, got 'false'"),
    (NETWORK, {"inputs": [_image()], "parameters": {"binary_data_output": 1}},
     "parameter 'binary_data_output' must be true or false"),
    (NETWORK, {"inputs": [_image()], "outputs": [{"name": "logits", "parameters": {"binary_data": "true"}}]},
     "output 'logits': parameter 'binary_data' must be true or false"),
    (NETWORK, {"inputs": [_image()], "parameters": "binary"}, "request: 'parameters' must be an object"),
    (NETWORK, {"inputs": [_image(parameters=["x"])]}, "input 'image': 'parameters' must be an object"),
    (NETWORK, {"inputs": [_image()], "outputs": [{"name": "logits", "parameters": {"classification": 1}}]},
     "output 'logits': the classification extension is not supported"),
    (NETWORK, {"inputs": [_image()], "outputs": [{"name": "logits", "parameters": {"shared_memory_region": "r"}}]},
     "output 'logits': the shared memory extension"),
    (NETWORK, {"inputs": [_image(parameters={"shared_memory_region": "r", "shared_memory_byte_size": 16384})]},
     "input 'image': the shared memory extension"),
    (NETWORK, {"inputs": [_image(), _image()]}, "input 'image' is given twice"),
    (NETWORK, {"id": 7, "inputs": [_image()]}, "request 'id' must be a string, got 7"),
    (NETWORK, {"id": {"n": 1}, "inputs": [_image()]}, 'request \'id\' must be a string, got {"n": 1}'),
    (NETWORK, {"inputs": [_image()], "outputs": [{"name": "logits"}, {"name": "logits"}]},
     "output 'logits' is asked for twice"),
    (NETWORK, {"inputs": [_image(data=["0.5"] * 4096)]}, "input 'image': data holds strings, not FP32 values"),
    (NETWORK, {"inputs": [_image(data=[True] * 4096)]}, "input 'image': data holds booleans, not FP32 values"),
    (NETWORK, {"inputs": [_image(data=[True] + [0.5] * 4095)]},
     "input 'image': data holds booleans among numbers, not FP32 values"),
    (PIPELINE, {"inputs": [_hu(data=[[-1000] * 8] * 7 + [[40] * 7 + [False]])]},
     "input 'hu': data holds booleans among numbers, not INT16 values"),
    (PIPELINE, {"inputs": [_hu(data=["-1000"] * 64)]}, "input 'hu': data holds strings, not INT16 values"),
    (PIPELINE, {"inputs": [_hu(data=[-1000.5] * 64)]}, "input 'hu': data holds fractions, not INT16 values"),
    (PIPELINE, {"inputs": [_hu("UINT16", data=[-1] + [0] * 63)]}, "input 'hu': a value lies outside the range of UINT16"),
    (PIPELINE, {"inputs": [_hu("FP32", data=[1e39] + [0.0] * 63)]}, "input 'hu': a value lies outside the range of FP32"),
])
def test_wrong_parameters_data_and_extensions_are_400_naming_them(server, path, doc, fragment):
    status, _, data = _post(server.url, path, doc)
    assert status == 400, data
    assert fragment in json.loads(data)["error"]


def test_integer_json_data_is_taken_for_float_tensors(server):
    """A JSON number without a fraction is a valid FP32 value: refusing strings must not refuse it."""
    status, _, data = _post(server.url, PIPELINE, {"inputs": [_hu("FP32", data=[-1000] * 32 + [40] * 32)]})
    assert status == 200, data
    assert json.loads(data)["outputs"][0]["shape"] == [1, 8, 8]


def test_the_request_id_is_echoed_as_sent(server):
    status, _, data = _post(server.url, NETWORK, {"id": "scan 7/ü", "inputs": [_image()]})
    assert status == 200 and json.loads(data)["id"] == "scan 7/ü"
