"""The real server on 127.0.0.1 driven by tritonclient.http and by raw HTTP requests.

Logits are checked against an independent ONNX Runtime session on the bundle's model.onnx.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from tests.serve.http_util import http_request

tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def oracle(serve_bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(serve_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"image": x})[0]


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 0.4, (n, 1, 64, 64)).astype(np.float32)




@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_matches_onnxruntime(server, oracle, binary):
    client = tritonclient_http.InferenceServerClient(url=server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("edgeseg")
    meta = client.get_model_metadata("edgeseg")
    assert meta["inputs"][0] == {"name": "image", "datatype": "FP32", "shape": [-1, 1, 64, 64]}
    x = _batch(3)
    inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tritonclient_http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("edgeseg", [inp], outputs=[out], request_id="r1")
    logits = result.as_numpy("logits")
    assert logits.shape == (3, 2, 64, 64)  # the test bundle has background and liver
    np.testing.assert_allclose(logits, oracle(x), rtol=1e-4, atol=1e-4)
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("backend", ["openvino:fp32", "openvino:int8", "torchscript:fp32"])
def test_every_cpu_runner_serves_binary_requests(server_factory, serve_bundle, backend):
    """The server reads a binary tensor with np.frombuffer, which is read-only: every runner must
    take it (OpenVINO refused to lend such memory, and each request alone in its batch failed
    with HTTP 500). Logits equal those of the same runner in this process."""
    from edgeseg.runtime.runners import runner_class
    from edgeseg.runtime.segmenter import Segmenter

    cls = runner_class(backend.split(":")[0])
    if not cls.available():
        pytest.skip(f"{cls.name} is not installed ({cls.library} missing: pip install 'edgeseg[{cls.extra}]')")
    server = server_factory(backend=backend, max_batch=4, max_body_bytes=4 << 20)
    client = tritonclient_http.InferenceServerClient(url=server.url)
    with Segmenter.load(serve_bundle, backend=backend) as local:
        for n in (1, 3):
            x = _batch(n, seed=n)
            inp = tritonclient_http.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = tritonclient_http.InferRequestedOutput("logits", binary_data=True)
            logits = client.infer("edgeseg", [inp], outputs=[out]).as_numpy("logits")
            np.testing.assert_allclose(logits, local.runner.infer(x), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_each_get_their_own_rows(server, oracle):
    client_inputs = [_batch(1 + k % 3, seed=k) for k in range(12)]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call(k: int) -> None:
        try:
            client = tritonclient_http.InferenceServerClient(url=server.url)
            inp = tritonclient_http.InferInput("image", list(client_inputs[k].shape), "FP32")
            inp.set_data_from_numpy(client_inputs[k], binary_data=True)
            results[k] = client.infer("edgeseg", [inp]).as_numpy("logits")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, x in enumerate(client_inputs):
        np.testing.assert_allclose(results[k], oracle(x), rtol=1e-4, atol=1e-4)


def _infer_body(x: np.ndarray, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}]}).encode()


@pytest.mark.parametrize("body,pattern", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"inputs": []}).encode(), "non-empty 'inputs'"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32", "data": [1.0]}]}).encode(),
     "holds 4096 elements, more than a request body of"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1.0] * 60}]}).encode(),
     "60 values do not fill shape"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 32, 32], "datatype": "FP32",
                             "data": [0.0] * 1024}]}).encode(), "differs from"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "INT16",
                             "data": [0] * 4096}]}).encode(),
     "takes the pre-processed FP32 tensor, got INT16; CT values .* go to model 'edgeseg-pipeline'"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP16",
                             "data": [0.0] * 4096}]}).encode(), "takes the pre-processed FP32 tensor, got FP16$"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP64",
                             "data": [0.0] * 4096}]}).encode(), "takes the pre-processed FP32 tensor, got FP64$"),
    (json.dumps({"inputs": [{"name": "scan", "shape": [1], "datatype": "FP32", "data": [0.0]}]}).encode(),
     "takes one input 'image'"),
    (json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP99", "data": []}]}).encode(),
     "datatype 'FP99'"),
])
def test_malformed_requests_get_400_and_the_server_keeps_serving(server, oracle, body, pattern):
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", body,
                               {"Content-Type": "application/json"})
    assert status == 400
    assert re.search(pattern, json.loads(data)["error"])
    x = _batch(1)
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(x))
    assert status == 200
    out = json.loads(data)["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), oracle(x), rtol=1e-4, atol=1e-4)


def test_unknown_model_is_404(server):
    for method, path in (("GET", "/v2/models/other"), ("GET", "/v2/models/other/ready"),
                         ("POST", "/v2/models/other/infer"), ("GET", "/v2/models/edgeseg/versions/7")):
        status, _, data = http_request(server.url, method, path, b"{}" if method == "POST" else None)
        assert status == 404, path
        assert "error" in json.loads(data)


def test_oversize_body_is_413(server):
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", b"x" * (5 << 20))
    assert status == 413
    assert "exceeds the limit" in json.loads(data)["error"]
    assert http_request(server.url, "GET", "/v2/health/live")[0] == 200


def test_batch_above_the_limit_is_400(server):
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(_batch(5)))
    assert status == 400
    assert "at most 4 slices" in json.loads(data)["error"]


def test_binary_body_with_wrong_size_is_400(server):
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1, 64, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 100}}]}).encode()
    status, _, data = http_request(server.url, "POST", "/v2/models/edgeseg/infer", header + b"\0" * 100,
                               {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400
    assert "binary_data_size" in json.loads(data)["error"]


def test_full_queue_answers_503(server_factory, gate_model):
    """One request in the model, one in the queue of one place: the third is refused at once.

    The model call waits on a gate the test opens, so which request is where does not depend on
    how fast this machine runs the model; the batcher, the queue and the HTTP layer are the real ones.
    """
    from concurrent.futures import ThreadPoolExecutor

    slow = server_factory(max_batch=1, queue_size=1)
    entered, release = gate_model(slow)
    batcher = slow.app.state.models["edgeseg"].batcher
    x = _infer_body(_batch(1))

    def post():
        return http_request(slow.url, "POST", "/v2/models/edgeseg/infer", x)

    with ThreadPoolExecutor(2) as pool:
        try:
            in_model = pool.submit(post)
            assert entered.wait(30), "the first request never reached the model"
            queued = pool.submit(post)
            deadline = time.monotonic() + 30
            while batcher.depth < 1:  # the second request holds the only queue place
                assert time.monotonic() < deadline, "the second request never reached the queue"
                time.sleep(0.005)
            status, _, data = post()
            assert status == 503, (status, data)
            assert "queue is full" in json.loads(data)["error"]
        finally:
            release.set()
        assert in_model.result()[0] == 200 and queued.result()[0] == 200
    assert http_request(slow.url, "POST", "/v2/models/edgeseg/infer", x)[0] == 200


def test_metrics_count_requests_and_batches(server):
    http_request(server.url, "POST", "/v2/models/edgeseg/infer", _infer_body(_batch(2)))
    status, headers, data = http_request(server.url, "GET", "/metrics")
    assert status == 200
    text = data.decode()
    ok = re.search(r'edgeseg_requests_total\{code="200",endpoint="model_infer"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 1
    assert re.search(r"edgeseg_batch_size_count (\d+)", text)
    assert "edgeseg_queue_depth" in text
    assert "edgeseg_request_latency_seconds_bucket" in text


def test_upload_npy_returns_the_mask_of_predict(server, serve_bundle):
    from edgeseg.runtime.segmenter import Segmenter

    hu = np.full((2, 80, 70), -1000, np.int16)
    hu[:, 20:60, 15:55] = 60  # a soft-tissue block
    buffer = io.BytesIO()
    np.save(buffer, hu)
    status, headers, data = http_request(server.url, "POST", "/v1/segment?format=npy", buffer.getvalue())
    assert status == 200, data
    mask = np.load(io.BytesIO(data))
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as seg:
        expected = seg.predict_volume(hu)
    np.testing.assert_array_equal(mask, expected)


def test_upload_dicom_slice_returns_png_mask(server):
    from pathlib import Path

    from PIL import Image

    dcm = sorted((Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice").glob("*.dcm"))[0]
    status, headers, data = http_request(server.url, "POST", "/v1/segment?format=png", dcm.read_bytes())
    assert status == 200, data
    assert headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(data)))
    assert image.shape == (512, 512) and image.dtype == np.uint8
    assert set(np.unique(image)) <= {0, 1}


@pytest.mark.skipif(not shutil.which("dcmcjpeg"), reason="dcmtk's dcmcjpeg is not installed")
def test_upload_of_a_jpeg_lossless_dicom_slice_is_segmented_as_the_uncompressed_one(server, tmp_path):
    """JPEG Lossless, a PACS's usual compressed CT syntax (made here by dcmtk's dcmcjpeg), was
    answered 400 "cannot decode pixel data (truncated?)"; its mask is now the uncompressed slice's."""
    from pathlib import Path

    dcm = sorted((Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice").glob("*.dcm"))[0]
    subprocess.run(["dcmcjpeg", "+e1", str(dcm), str(tmp_path / "sv1.dcm")], check=True, capture_output=True)
    masks = []
    for body in (dcm.read_bytes(), (tmp_path / "sv1.dcm").read_bytes()):
        status, _, data = http_request(server.url, "POST", "/v1/segment?format=npy", body)
        assert status == 200, data
        masks.append(np.load(io.BytesIO(data)))
    np.testing.assert_array_equal(masks[1], masks[0])


def test_an_enhanced_ct_upload_holding_two_volumes_is_400_saying_what_to_do(server, tmp_path):
    """Before, the answer said "pick one with --volume K", an option an upload does not have."""
    from tests.dicom_volume_series import make_enhanced_temporal

    path, _ = make_enhanced_temporal(tmp_path)
    status, _, data = http_request(server.url, "POST", "/v1/segment?format=npy", path.read_bytes())
    error = json.loads(data)["error"]
    assert status == 400 and "holds 2 volumes: 1 (TemporalPositionIndex 1, 3 images)" in error, error
    assert "an upload is one volume: segment one with edgeseg predict --volume K" in error, error
    assert "pick one with --volume K" not in error


def test_upload_garbage_is_400(server):
    status, _, data = http_request(server.url, "POST", "/v1/segment", b"hello")
    assert status == 400
    assert "not a DICOM file" in json.loads(data)["error"]


def test_a_bad_upload_is_named_as_the_upload_not_by_the_servers_temporary_path(server):
    import gzip

    nifti = np.zeros(348 + 4, np.uint8)  # a NIfTI-1 header claiming 64x64x4 int16 voxels, and no voxels
    nifti[:4] = np.frombuffer(np.int32(348).tobytes(), np.uint8)
    nifti[40:56] = np.frombuffer(np.array([3, 64, 64, 4, 1, 1, 1, 1], "<i2").tobytes(), np.uint8)
    nifti[70:72] = np.frombuffer(np.array([4], "<i2").tobytes(), np.uint8)  # datatype int16
    nifti[72:74] = np.frombuffer(np.array([16], "<i2").tobytes(), np.uint8)  # bitpix
    nifti[76:108] = np.frombuffer(np.ones(8, "<f4").tobytes(), np.uint8)  # pixdim
    nifti[108:112] = np.frombuffer(np.float32(352).tobytes(), np.uint8)  # vox_offset
    nifti[252:254] = np.frombuffer(np.array([1], "<i2").tobytes(), np.uint8)  # qform_code: an orientation is given
    nifti[344:348] = np.frombuffer(b"n+1\0", np.uint8)
    for body in (nifti.tobytes(), gzip.compress(nifti.tobytes())):
        status, _, data = http_request(server.url, "POST", "/v1/segment", body)
        error = json.loads(data)["error"]
        assert status == 400 and "image upload.nii" in error and "32768 bytes" in error, error
        assert "edgeseg-upload-" not in error and "/tmp" not in error, error


def test_remote_client_gives_the_local_segmentation(server, serve_bundle):
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.client import segment_remote

    hu = np.full((11, 90, 80), -1000, np.int16)
    hu[:, 25:70, 20:60] = 55
    remote = segment_remote(f"http://{server.url}/models/edgeseg", read_manifest(serve_bundle), hu, batch_size=4)
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as seg:
        local = seg.predict_volume(hu)
    assert remote.shape == (11, 90, 80)
    np.testing.assert_array_equal(remote, local)


def test_serve_on_a_busy_port_is_one_line(serve_bundle, server):
    import subprocess
    import sys

    host, port = server.url.split(":")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "serve", str(serve_bundle), "--host", host,
                           "--port", port], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"edgeseg: error: cannot listen on {host}:{port}: Address already in use"]



def test_a_model_that_fails_on_the_server_is_a_500_not_the_clients_fault(serve_bundle, serve_process, swap_graph,
                                                                          tmp_path):
    """A request the model cannot run (here the served graph gives 5 classes where its manifest
    declares 2) is the server's failure: 500, with the runtime's one-line reason in the server's
    log (the answer names the request's ID only), and the server keeps serving; a bad request
    stays a 400."""
    import shutil

    bundle = shutil.copytree(serve_bundle, tmp_path / "bundle")
    swap_graph(bundle, 5)
    with serve_process(bundle, "--backend", "onnxruntime:fp32") as (proc, port):
        url = f"127.0.0.1:{port}"
        x = _batch(1)
        header = json.dumps({"inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                                         "data": x.ravel().tolist()}]}).encode()
        status, headers, data = http_request(url, "POST", "/v2/models/edgeseg/infer", header)
        assert status == 500 and headers["X-Request-ID"] in json.loads(data)["error"]
        status, _, _ = http_request(url, "POST", "/v2/models/edgeseg/infer", b"{not json")
        assert status == 400
        assert http_request(url, "GET", "/v2/health/ready")[0] == 200
        proc.terminate()
        logged = [line for line in proc.communicate(timeout=60)[1].splitlines() if headers["X-Request-ID"] in line]
    assert len(logged) == 1 and "does not match its manifest" in logged[0]
