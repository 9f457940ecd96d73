"""Backends that run a bundle artifact: one file per library, imported lazily.

``RUNNERS`` maps a backend name to ``module:Class``; ``runner_class(name)`` imports only the one
asked for, so a missing optional library affects only its own backend.
"""

from __future__ import annotations

import importlib

from edgeseg.errors import BackendError
from edgeseg.runtime.runners.base import Runner

RUNNERS: dict[str, str] = {
    "onnxruntime": "edgeseg.runtime.runners.onnxruntime:OnnxRuntimeRunner",
    "onnxruntime-gpu": "edgeseg.runtime.runners.onnxruntime:OnnxRuntimeGpuRunner",
    "openvino": "edgeseg.runtime.runners.openvino:OpenVinoRunner",
    "tensorrt": "edgeseg.runtime.runners.tensorrt:TensorRTRunner",
    "torchscript": "edgeseg.runtime.runners.torchscript:TorchScriptRunner",
}


def runner_class(name: str) -> type[Runner]:
    """The Runner subclass registered as ``name``; BackendError naming the known ones otherwise."""
    try:
        target = RUNNERS[name]
    except KeyError:
        raise BackendError(f"unknown backend {name!r}; known: {sorted(RUNNERS)}") from None
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


__all__ = ["RUNNERS", "Runner", "runner_class"]
