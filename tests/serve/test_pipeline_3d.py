"""The pipeline model's 3-D component filters run per request, never across the requests of one
micro-batch, on a bundle copy whose manifest asks for them (artifacts unchanged)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")

from edgeseg.data.phantom import synth_phantom  # noqa: E402
from edgeseg.kernels import ComponentRule, filter_components  # noqa: E402
from edgeseg.runtime.segmenter import Segmenter  # noqa: E402

POST = {"resize": "logits", "classes": {"1": {"keep_largest_3d": True}}}


def _copy_with(bundle, tmp_path_factory, post):
    copy = shutil.copytree(bundle, tmp_path_factory.mktemp("bundle3d") / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["postprocess"] = post
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def serve_bundle(exported_bundle, tmp_path_factory):
    """Overrides the serve fixtures' bundle for this module."""
    return _copy_with(exported_bundle, tmp_path_factory, POST)


def _pipeline(url, hu):
    client = tritonclient_http.InferenceServerClient(url=url)
    tensor = tritonclient_http.InferInput("hu", list(hu.shape), "INT16")
    tensor.set_data_from_numpy(hu, binary_data=True)
    return client.infer("edgeseg-pipeline", [tensor]).as_numpy("labels")


def test_each_request_is_filtered_as_its_own_volume(server, serve_bundle):
    # Requests of one shape are batched together: a filter across them would keep one
    # request's organ and clear the others' (every other request is mirrored left-right, so
    # livers of neighbouring requests do not touch).
    stacks = [synth_phantom(f"case_{k:03d}", 40 + k, shape=(4, 64, 64)).hu[k % 3:k % 3 + 2].astype(np.int16)
              for k in range(8)]
    stacks = [np.ascontiguousarray(hu[:, :, ::-1]) if k % 2 else hu for k, hu in enumerate(stacks)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda hu: _pipeline(server.url, hu), stacks))
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        for hu, labels in zip(stacks, results):
            raw = local.predict_volume(hu, volume_filters=False)
            want = filter_components(raw, {1: ComponentRule(keep_largest=True)}, volume=True, reference=True)
            np.testing.assert_array_equal(labels, want)
            np.testing.assert_array_equal(labels, local.predict_volume(hu))
            assert (labels == 1).any()


def test_a_volume_filter_in_ml_refuses_requests_without_spacing(exported_bundle, tmp_path_factory):
    import threading

    from edgeseg.serve.model_inputs import ModelInputError
    from edgeseg.serve.models import PipelineModel

    bundle = _copy_with(exported_bundle, tmp_path_factory, {"classes": {"1": {"min_ml": 5.0}}})
    with Segmenter.load(bundle, backend="onnxruntime:fp32") as seg:
        model = PipelineModel(seg, "edgeseg", 4096, max_batch=4, queue_size=4, max_delay=0.001, on_batch=None,
                              lock=threading.Lock())
        try:
            with pytest.raises(ModelInputError, match=r"class 1 \(liver\) under 5 mL, which needs the voxel spacing: "
                                                       r"send the input 'spacing'"):
                model.checked({"hu": synth_phantom("case_001", 1, shape=(2, 64, 64)).hu})
        finally:
            model.close()
