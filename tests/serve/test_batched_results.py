"""What docs/serving.md promises of micro-batching: with ONNX Runtime and OpenVINO a request's
logits do not depend on which requests share its model call (bit for bit); TorchScript's may
differ in the last bits, which the docs say and this test measures rather than hides."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")


def _infer(url: str, x: np.ndarray) -> np.ndarray:
    client = tritonclient_http.InferenceServerClient(url=url)
    tensor = tritonclient_http.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    return client.infer("edgeseg", [tensor]).as_numpy("logits")


def _batched_with_others(server, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Logits of ``inputs[1:]`` served in one model call (``inputs[0]`` holds the model while
    they queue, so they are batched together whatever this machine's speed)."""
    batcher = server.app.state.models["edgeseg"].batcher
    real_infer, entered, release, sizes = batcher._infer, threading.Event(), threading.Event(), []

    def gated(batch):
        sizes.append(batch.shape[0])
        entered.set()
        assert release.wait(30), "the test never opened the gate"
        return real_infer(batch)

    batcher._infer = gated
    with ThreadPoolExecutor(len(inputs)) as pool:
        try:
            first = pool.submit(_infer, server.url, inputs[0])
            assert entered.wait(30)
            rest = [pool.submit(_infer, server.url, x) for x in inputs[1:]]
            deadline = time.monotonic() + 30
            while batcher.depth < len(rest):
                assert time.monotonic() < deadline, "the requests never reached the queue"
                time.sleep(0.005)
        finally:
            release.set()
        first.result()
        results = [future.result() for future in rest]
    batcher._infer = real_infer
    assert sizes == [inputs[0].shape[0], sum(x.shape[0] for x in inputs[1:])]
    return results


@pytest.mark.parametrize("backend,identical", [
    ("onnxruntime:fp32", True), ("onnxruntime:int8", True), ("openvino:fp32", True), ("openvino:int8", True),
    ("torchscript:fp32", False),
])
def test_logits_under_micro_batching_are_those_of_the_request_alone(server_factory, serve_bundle, backend,
                                                                     identical):
    from edgeseg.runtime.runners import runner_class
    from edgeseg.runtime.segmenter import Segmenter

    cls = runner_class(backend.split(":")[0])
    if not cls.available():
        pytest.skip(f"{cls.name} is not installed")
    rng = np.random.default_rng(7)
    inputs = [rng.normal(0.3, 0.4, (n, 1, 64, 64)).astype(np.float32) for n in (1, 1, 2, 3)]
    server = server_factory(backend=backend, max_batch=8)
    served = _batched_with_others(server, inputs)
    with Segmenter.load(serve_bundle, backend=backend) as local:
        alone = [local.runner.infer(x) for x in inputs[1:]]
    if identical:
        for got, expected in zip(served, alone):
            np.testing.assert_array_equal(got, expected)
    else:  # the last bits only, as the docs say
        for got, expected in zip(served, alone):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
