"""NAME-pipeline (HU in, labels out) and the protocol gaps, against the real server on 127.0.0.1.

Labels are checked against ``Segmenter.predict_volume`` on a separately loaded bundle (the
path of ``edgeseg predict``); error bodies are checked as tritonclient decodes them.
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402  (present with tritonclient)
from edgeseg.data.phantom import synth_phantom  # noqa: E402
from tests.serve.http_util import http_request


@pytest.fixture(scope="module")
def local(serve_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as segmenter:
        yield segmenter


def _phantom_hu(n: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """CT-like slices: air around a soft-tissue body with a brighter organ, plus noise."""
    rng = np.random.default_rng(seed)
    hu = np.full((n, rows, cols), -1000.0)
    hu[:, rows // 6: rows - rows // 6, cols // 8: cols - cols // 8] = 40
    hu[:, rows // 3: rows // 2, cols // 4: cols // 2] = 180
    return (hu + rng.normal(0, 20, hu.shape)).astype(np.int16)




def _pipeline(url, hu, datatype="INT16", binary=True, compression=None):
    client = tritonclient_http.InferenceServerClient(url=url)
    tensor = tritonclient_http.InferInput("hu", list(hu.shape), datatype)
    tensor.set_data_from_numpy(hu, binary_data=binary)
    wanted = tritonclient_http.InferRequestedOutput("labels", binary_data=binary)
    result = client.infer("edgeseg-pipeline", [tensor], outputs=[wanted], request_compression_algorithm=compression)
    return result.as_numpy("labels")


@pytest.mark.parametrize("dtype,datatype", [(np.int16, "INT16"), (np.uint16, "UINT16"), (np.float32, "FP32")])
def test_pipeline_labels_equal_predict_volume(server, local, dtype, datatype):
    # A case of the abdomen phantom the bundle was trained on (a liver in the middle slices, none
    # at either end), at 90 x 77 rather than the model's 64 x 64: whatever CPU's float kernels
    # trained the model, it learned this liver and finds it, where on the box-shaped _phantom_hu
    # it found nothing on some CPUs (an AVX2-only EPYC), leaving nothing to compare.
    hu = np.round(synth_phantom("case_pipeline", 0, shape=(4, 90, 77)).hu).astype(np.int16)
    # UINT16 holds HU of 0 and above only: HU clipped at 0, which this bundle's 0..255 window makes
    # the same model input (stored values, HU + 1024, are refused: test_pipeline_refuses_stored_values)
    sent = np.clip(hu, 0, None).astype(np.uint16) if dtype == np.uint16 else hu.astype(dtype)
    expected = local.predict_volume(hu.astype(np.float32))
    labels = _pipeline(server.url, sent, datatype)
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    assert np.count_nonzero(labels) > 0
    np.testing.assert_array_equal(labels, expected)


def test_pipeline_one_slice_json_keeps_its_shape(server, local):
    hu = _phantom_hu(1, 48, 52, seed=3)[0]
    labels = _pipeline(server.url, hu, binary=False)
    assert labels.shape == (48, 52)
    np.testing.assert_array_equal(labels, local.predict(hu))


def test_concurrent_pipeline_requests_of_different_sizes(server, local):
    from concurrent.futures import ThreadPoolExecutor

    stacks = [_phantom_hu(1 + k % 2, 60 + 8 * (k % 3), 64, seed=k) for k in range(9)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda hu: _pipeline(server.url, hu), stacks))
    for hu, labels in zip(stacks, results):
        np.testing.assert_array_equal(labels, local.predict_volume(hu))


def test_pipeline_metadata_names_the_classes(server, serve_bundle):
    from edgeseg.runtime.manifest import read_manifest

    client = tritonclient_http.InferenceServerClient(url=server.url)
    meta = client.get_model_metadata("edgeseg-pipeline")
    assert meta["inputs"][0]["name"] == "hu" and meta["outputs"][0] == {"name": "labels", "datatype": "UINT8",
                                                                       "shape": [-1, -1, -1]}
    labels = read_manifest(serve_bundle).labels
    assert meta["parameters"]["labels"] == {str(k): v for k, v in labels.items()}
    assert client.is_model_ready("edgeseg-pipeline")


def test_fp32_hu_sent_to_the_network_names_the_pipeline(server, serve_bundle):
    hu = _phantom_hu(1, 64, 64).astype(np.float32)[:, None]
    client = tritonclient_http.InferenceServerClient(url=server.url)
    tensor = tritonclient_http.InferInput("image", list(hu.shape), "FP32")
    tensor.set_data_from_numpy(hu)
    with pytest.raises(InferenceServerException, match="looks like HU: send CT values to model 'edgeseg-pipeline'") as err:
        client.infer("edgeseg", [tensor])
    assert err.value.status() == "400"


def test_normalised_tensor_sent_to_the_pipeline_names_the_network(server, local):
    from edgeseg.kernels import preprocess

    x = preprocess(_phantom_hu(2, 64, 64), local.spec)[:, 0]  # what the network model takes, without C
    with pytest.raises(InferenceServerException, match="not HU .* to model 'edgeseg'"):
        _pipeline(server.url, np.ascontiguousarray(x), "FP32")
    with pytest.raises(InferenceServerException, match="cannot be CT values"):
        _pipeline(server.url, np.full((1, 8, 8), 1e6, np.float32), "FP32")
    # A constant slice of water (0 HU) lies inside the normalised range but is valid CT.
    water = np.zeros((1, 16, 16), np.float32)
    np.testing.assert_array_equal(_pipeline(server.url, water, "FP32"), local.predict_volume(water))


def test_pipeline_refuses_stored_values(server):
    """UINT16 as a scanner stores CT (HU + 1024, air near 0) is not HU: a 400 naming the rescale."""
    stored = (_phantom_hu(2, 64, 64).astype(np.int32) + 1024).clip(0, None).astype(np.uint16)
    assert stored.min() >= 0 and stored.max() > 1000
    with pytest.raises(InferenceServerException, match="none below 0 HU.*RescaleIntercept") as err:
        _pipeline(server.url, stored, "UINT16")
    assert err.value.status() == "400"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies_are_accepted(server, local, algorithm):
    hu = _phantom_hu(2, 64, 64, seed=5)
    np.testing.assert_array_equal(_pipeline(server.url, hu, compression=algorithm), local.predict_volume(hu))


def test_zip_bomb_is_413_and_bad_encodings_are_refused(server):
    bomb = gzip.compress(b"\0" * (16 << 20))  # 16 KiB that expands past the 4 MiB limit
    assert len(bomb) < 64 << 10
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "once gzip-decompressed" in json.loads(data)["error"]
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", b"xx", {"Content-Encoding": "br"})
    assert status == 415 and "not supported" in json.loads(data)["error"]
    truncated = zlib.compress(b'{"inputs": []}')[:-6]
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", truncated, {"Content-Encoding": "deflate"})
    assert status == 400 and "deflate" in json.loads(data)["error"]


@pytest.mark.parametrize("shape", [[4294967296, 4294967296], [1e23], [2 ** 63, 2], [0, 2 ** 70], [1] * 9])
@pytest.mark.parametrize("model", ["edgeseg", "edgeseg-pipeline"])
def test_absurd_shapes_are_400(server, shape, model):
    body = json.dumps({"inputs": [{"name": "image" if model == "edgeseg" else "hu", "shape": shape,
                                   "datatype": "FP32", "data": []}]}).encode()
    status, _, data = http_request(server.url, "POST", f"/v2/models/{model}/infer", body)
    assert status == 400, data
    assert "shape" in json.loads(data)["error"]
    header = json.dumps({"inputs": [{"name": "hu", "shape": [65536, 65536], "datatype": "INT16",
                                     "parameters": {"binary_data_size": 2 * 65536 ** 2}}]}).encode()
    status, _, data = http_request(server.url, "POST", f"/v2/models/{model}/infer", header + b"\0" * 64,
                               {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "binary bytes" in json.loads(data)["error"]


@pytest.mark.parametrize("field,value,fragment", [
    ("datatype", ["FP32"], "datatype"), ("datatype", {"a": 1}, "datatype"),
    ("output-parameters", ["binary_data"], "parameters"), ("output-parameters", "yes", "parameters"),
    ("shape", [2 ** 64, 1], "shape"), ("body", "[" * 200000, "nested too deeply"),
])
def test_malformed_fields_found_by_fuzzing_are_400(server, field, value, fragment):
    entry = {"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32", "data": [0.0] * 4096}
    doc = {"inputs": [entry]}
    if field == "output-parameters":
        doc["outputs"] = [{"name": "logits", "parameters": value}]
    elif field != "body":
        entry[field] = value
    body = value.encode() if field == "body" else json.dumps(doc).encode()
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", body)
    assert status == 400, data
    assert fragment in json.loads(data)["error"]


def test_pipeline_limits_are_400(server_factory):
    small = server_factory(max_batch=2, max_side=40)
    cases = [(_phantom_hu(3, 32, 32), "INT16", "holds 1..2 slices"),
             (_phantom_hu(1, 32, 48), "INT16", "exceed the server's limit of 40 pixels"),
             (_phantom_hu(1, 32, 32)[None], "INT16", "shape \\[H, W\\] or \\[N, H, W\\].*to model 'edgeseg'"),
             (_phantom_hu(1, 32, 32).astype(np.uint8), "UINT8", "takes hu as one of .*, got UINT8$"),
             (_phantom_hu(1, 32, 32).astype(np.float16), "FP16", "takes hu as one of .*, got FP16$"),
             (np.full((1, 1, 32), -1000, np.int16), "INT16", "too small")]
    for hu, datatype, pattern in cases:
        with pytest.raises(InferenceServerException, match=pattern) as err:
            _pipeline(small.url, hu, datatype)
        assert err.value.status() == "400"


@pytest.mark.parametrize("shape", [[1, 0, 64], [0, 5], [5, 0], [1, 64, 0]])
@pytest.mark.parametrize("datatype", ["FP32", "INT16"])
@pytest.mark.parametrize("binary", [False, True])
def test_zero_size_hu_is_400_too_small(server, shape, datatype, binary):
    """An empty stack is refused as too small whatever its datatype: FP32 once reached a
    min() of the empty array and answered 500."""
    entry = {"name": "hu", "datatype": datatype, "shape": shape}
    if binary:
        header = json.dumps({"inputs": [dict(entry, parameters={"binary_data_size": 0})]}).encode()
        body, headers = header, {"Inference-Header-Content-Length": str(len(header))}
    else:
        body, headers = json.dumps({"inputs": [dict(entry, data=[])]}).encode(), {}
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg-pipeline/infer", body, headers)
    assert status == 400, data
    assert "too small" in json.loads(data)["error"]


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v2/nowhere", 404), ("POST", "/v2/models/edgeseg", 405), ("GET", "/v2/models/edgeseg/infer", 405),
    ("DELETE", "/v2/health/live", 405), ("GET", "/v2/models/edgeseg-pipeline/versions/2/config", 404),
    ("POST", "/v2/repository/models/edgeseg/load", 400),
])
def test_every_error_is_a_kserve_error_body(server, method, path, status):
    got, headers, data = http_request(server.url, method, path, b"{}" if method == "POST" else None)
    assert got == status
    assert headers["content-type"] == "application/json"
    doc = json.loads(data)
    assert list(doc) == ["error"] and doc["error"]


def test_config_index_and_statistics_for_tritonclient(server, serve_bundle):
    from edgeseg.runtime.manifest import read_manifest

    client = tritonclient_http.InferenceServerClient(url=server.url)
    before = client.get_inference_statistics("edgeseg-pipeline")["model_stats"][0]
    _pipeline(server.url, _phantom_hu(2, 40, 40))
    with pytest.raises(InferenceServerException):  # refused before it is queued: not a failed inference (Triton's)
        _pipeline(server.url, np.zeros((1, 1, 1), np.int16))
    after = client.get_inference_statistics("edgeseg-pipeline")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 2
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == 1
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    names = {m["name"] for m in client.get_inference_statistics()["model_stats"]}
    assert names == {"edgeseg", "edgeseg-pipeline"}
    config = client.get_model_config("edgeseg")
    manifest = read_manifest(serve_bundle)
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": list(manifest.inputs[0].shape[1:]),
                                "optional": False}]
    assert config["max_batch_size"] == 4
    # Triton's parameters are strings; structured ones are JSON a client can read back
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert json.loads(params["labels"]) == {str(k): v for k, v in sorted(manifest.labels.items())}
    assert json.loads(params["max_batch"]) == 4
    assert client.get_model_config("edgeseg-pipeline")["output"][0]["data_type"] == "TYPE_UINT8"
    index = client.get_model_repository_index()
    assert index == [{"name": "edgeseg", "version": "1", "state": "READY"},
                     {"name": "edgeseg-pipeline", "version": "1", "state": "READY"}]


def test_serve_model_name_must_be_a_path_segment(serve_bundle):
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["serve", str(serve_bundle), "--model-name", "a/b", "--port", "1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "edgeseg: error: model name 'a/b' must be 1..80 letters, digits, '_', '.' or '-', starting with a letter or "
        "digit (it names a directory and a URL path)"]
