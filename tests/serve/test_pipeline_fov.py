"""The KServe pipeline model (``edgeseg serve``'s NAME-pipeline) judges a request that sends its
``spacing`` by the bundle's training field of view, as ``edgeseg predict`` judges a volume: with
EDGESEG_FOV_CHECK=refuse a request at 3x the training FOV is a one-line 400 before the network
runs, and one inside the range, or without a spacing, is answered as before. The test bundle was
trained on 64 x 3 mm = 192 mm phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.data.phantom import synth_phantom
from edgeseg.runtime.segmenter import Segmenter

http = pytest.importorskip("tritonclient.http")
pytest.importorskip("fastapi")
from tritonclient.utils import InferenceServerException  # noqa: E402  (present with tritonclient)


def _infer(url: str, hu: np.ndarray, spacing=None) -> np.ndarray:
    client = http.InferenceServerClient(url=url, network_timeout=120)
    inputs = [http.InferInput("hu", list(hu.shape), "INT16")]
    inputs[0].set_data_from_numpy(hu, binary_data=True)
    if spacing is not None:
        inputs.append(http.InferInput("spacing", [3], "FP32"))
        inputs[-1].set_data_from_numpy(np.asarray(spacing, dtype=np.float32))
    return client.infer("edgeseg-pipeline", inputs).as_numpy("labels")


def test_a_request_at_three_times_the_training_fov_is_refused_in_refusal_mode(exported_bundle):
    from edgeseg.serve.app import ServeConfig, create_app
    from tests.serve.conftest import RunningServer

    hu = np.ascontiguousarray(np.round(synth_phantom("case_fov", 3, shape=(4, 64, 64)).hu).astype(np.int16))
    with Segmenter.load(exported_bundle, backend="onnxruntime:fp32", fov_check="off") as local:
        want = local.predict_volume(hu)
    server = RunningServer(create_app(Segmenter.load(exported_bundle, backend="onnxruntime:fp32", fov_check="refuse"),
                                      ServeConfig(max_batch=4)))
    try:
        with pytest.raises(InferenceServerException) as refused:
            _infer(server.url, hu, (2.5, 9.0, 9.0))
        message = refused.value.message()
        assert refused.value.status() == "400" and "\n" not in message, message
        assert "request: field of view 576 mm (64 x 9 mm) lies outside the 192-192 mm" in message, message
        for spacing in ((2.5, 3.0, 3.0), None):  # 192 mm, and no spacing at all: answered as before
            assert np.count_nonzero(_infer(server.url, hu, spacing) != want) == 0
    finally:
        server.stop()


def test_requests_at_one_fov_outside_the_range_are_warned_of_once(exported_bundle, caplog):
    """A volume sent slice by slice, or a client repeating requests at one FOV, makes one warning, not one
    per request; another FOV outside the range makes its own, and every request is answered."""
    from edgeseg.serve.app import ServeConfig, create_app
    from tests.serve.conftest import RunningServer

    hu = np.ascontiguousarray(np.round(synth_phantom("case_fov", 3, shape=(4, 64, 64)).hu).astype(np.int16))
    server = RunningServer(create_app(Segmenter.load(exported_bundle, backend="onnxruntime:fp32", fov_check="warn"),
                                      ServeConfig(max_batch=4)))
    try:
        with caplog.at_level("WARNING"):
            for spacing in [(2.5, 9.0, 9.0)] * 3 + [(2.5, 12.0, 12.0)] * 2:
                assert _infer(server.url, hu, spacing).shape == hu.shape
    finally:
        server.stop()
    said = [r.getMessage() for r in caplog.records if "field of view" in r.getMessage()]
    assert [m.split(" (")[0] for m in said] == ["request: field of view 576 mm", "request: field of view 768 mm"], said
