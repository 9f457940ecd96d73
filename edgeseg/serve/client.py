"""A client that segments CT on a remote KServe v2 server: ``edgeseg serve`` or Triton.

It is the runtime's Segmenter with the remote runner: pre- and post-processing run here with
the bundle's PreprocessSpec and post-processing settings, only the network runs on the server.
The same code works against ``edgeseg serve`` and against a Triton server loading the
repository ``edgeseg triton`` wrote, because both take the same ``image`` tensor and return
the same ``logits``. ``edgeseg predict BUNDLE INPUT --backend http://HOST:PORT/models/NAME`` (or ``grpc://``, KServe v2
over gRPC) is the command-line form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.runtime.manifest import Manifest
from edgeseg.runtime.runners.remote import DEFAULT_TIMEOUT_S, remote_runner
from edgeseg.runtime.segmenter import Segmenter


def remote_segmenter(url: str, bundle: str | Path | Manifest, timeout: float = DEFAULT_TIMEOUT_S) -> Segmenter:
    """A Segmenter whose network runs at ``url`` (``http://`` or ``grpc://HOST:PORT/models/NAME``); ``bundle``
    (a bundle folder or its parsed manifest) gives the spec, labels and post-processing."""
    if not isinstance(bundle, Manifest):
        return Segmenter.load(bundle, backend=url, timeout=timeout)
    runner = remote_runner(url, bundle.inputs[0], bundle.outputs[0], bundle.max_batch, timeout=timeout,
                           artifacts=tuple(a.sha256 for a in bundle.artifacts), labels=bundle.labels)
    return Segmenter(bundle.spec, bundle.labels, runner, bundle.postprocess, bundle.max_batch,
                     resize_input=bundle.resize_input, manifest=bundle)


def segment_remote(url: str, bundle: str | Path | Manifest, hu: np.ndarray,
                   batch_size: int | None = None) -> np.typing.NDArray[np.uint8]:
    """Labels (N, H, W) uint8 for HU slices (H, W) or (N, H, W), the network run at ``url``
    with at most ``batch_size`` slices per request (default: the bundle's, at most 8)."""
    stack = np.asarray(hu)
    with remote_segmenter(url, bundle) as segmenter:
        return segmenter.predict_volume(stack[None] if stack.ndim == 2 else stack, batch_size=batch_size)
