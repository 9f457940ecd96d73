"""edgeseg serve's network model on a bundle whose input fixes its batch axis (see
tests/capi/test_manifest_types.py): the runtime sends such a model exactly that many slices per
call, and so must the server's micro-batcher."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tests.capi.test_manifest_types import _fixed_batch_bundle

pytest.importorskip("onnx")


def test_requests_to_a_fixed_batch_network_are_not_batched_beyond_it(serve_bundle, tmp_path):
    """Two one-slice requests to the network of a batch-1 bundle, queued together, were run as
    one batch of 2, which the model refuses: both failed. Each now runs on its own and gets the
    logits the runner gives for its slice alone."""
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.serve.app import ServeConfig
    from edgeseg.serve.models import served_models

    fixed = _fixed_batch_bundle(serve_bundle, tmp_path, 1)
    rng = np.random.default_rng(0)
    with Segmenter.load(fixed, backend="onnxruntime:fp32") as seg:
        slices = [rng.uniform(0, 1, (1, 1, *seg.spec.size)).astype(np.float32) for _ in range(2)]
        expected = [seg.infer(s) for s in slices]  # the runner on one slice, no batcher
        # a long delay so that the second request always joins the first one's batch if allowed
        models = served_models(seg, ServeConfig(max_delay_s=1.0), None, threading.Lock())
        try:
            network = models["edgeseg"]
            futures = [network.batcher.submit(s) for s in slices]
            got = [f.result(timeout=60) for f in futures]
        finally:
            for model in models.values():
                model.close()
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
