"""A client that segments HU slices on a remote KServe v2 server: ``edgeseg serve`` or Triton.

Pre- and post-processing run here with edgeseg's C kernels and the bundle's PreprocessSpec;
only the model runs on the server. The same code works against ``edgeseg serve`` and against a
Triton server loading the repository ``edgeseg triton`` wrote, because both take the same
``image`` tensor and return the same ``logits``.
"""

from __future__ import annotations

import numpy as np

from edgeseg.errors import require
from edgeseg.kernels import postprocess, preprocess
from edgeseg.runtime.manifest import Manifest


def segment_remote(url: str, manifest: Manifest, hu: np.ndarray, model: str = "edgeseg",
                   max_batch: int = 8) -> np.ndarray:
    """Labels (N, H, W) uint8 for HU slices (H, W) or (N, H, W), inferred at ``url`` (host:port)."""
    http = require("tritonclient.http", "dev", "the remote client")
    stack = hu[None] if hu.ndim == 2 else hu
    x = preprocess(stack, manifest.spec)
    client = http.InferenceServerClient(url=url)
    parts = []
    for start in range(0, x.shape[0], max_batch):
        chunk = np.ascontiguousarray(x[start:start + max_batch])
        tensor = http.InferInput(manifest.inputs[0].name, list(chunk.shape), "FP32")
        tensor.set_data_from_numpy(chunk, binary_data=True)
        wanted = http.InferRequestedOutput(manifest.outputs[0].name, binary_data=True)
        parts.append(client.infer(model, [tensor], outputs=[wanted]).as_numpy(manifest.outputs[0].name))
    logits = np.concatenate(parts)
    return postprocess(logits, stack.shape[-2:], keep_largest=bool(manifest.postprocess.get("keep_largest", False)))
