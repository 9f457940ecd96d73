"""OpenVINO runner: reads the bundle's ONNX artifacts directly and runs them on the CPU plugin."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError, require
from edgeseg.runtime.compiled_cache import CompiledModelCache
from edgeseg.runtime.runners.base import ArtifactRunner


def openvino_cache_key(version: str, device: str, threads: int, artifact: Path) -> str:
    """The engine key of an OpenVINO cache entry; libedgeseg builds the same string, so the C
    and the Python runtime share entries (same version, same compile settings). The artifact's
    resolved path is in it because OpenVINO names its blob after the model's path: two copies
    of a bundle get an entry each instead of adding blobs to one another's."""
    return f"openvino {version} {device} LATENCY f32 threads {threads} {artifact.resolve()}"


class OpenVinoRunner(ArtifactRunner):
    """Run an ONNX artifact with OpenVINO (``pip install 'edgeseg[openvino]'``).

    The model is compiled for the CPU with the latency hint and f32 inference precision: left
    to itself OpenVINO computes in bf16 on CPUs that have it, which would change an FP32
    model's numbers. INT8 Q/DQ graphs still run their quantised layers in int8.
    """

    name = "openvino"
    format = "onnx"
    library = "openvino"
    extra = "openvino"
    preference = {"int8": 5, "fp32": 7, "fp16": 10}

    def __init__(self, *args, device: str = "CPU", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ov = require("openvino", "openvino", "the OpenVINO backend")
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads > 0:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self._device = device
        key = openvino_cache_key(ov.get_version(), device, self.threads, self.path)
        cache = CompiledModelCache("openvino", self.entry.sha256, key)

        def compile_model(folder, hit):
            core = ov.Core()
            if folder is not None:
                core.set_property({"CACHE_DIR": str(folder)})
            # From the path: a cache hit then skips reading and converting the ONNX graph.
            return core.compile_model(str(self.path), device, config)

        try:
            compiled = cache.load(compile_model)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise BackendError(f"openvino could not load {self.path.name}: {str(exc).strip().splitlines()[0]}") from None
        self._request = compiled.create_infer_request()

    @property
    def device(self) -> str:
        return self._device.lower()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        # The request owns its output buffer and overwrites it on the next call.
        return self._request.get_output_tensor(0).data.copy()

    def close(self) -> None:
        self._request = None
