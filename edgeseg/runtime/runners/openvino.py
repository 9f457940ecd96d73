"""OpenVINO runner: reads the bundle's ONNX artifacts directly and runs them on the CPU plugin.

The runner needs only OpenVINO's runtime bindings (``openvino._pyopenvino``: Core, the compiled
model, infer requests, tensors). ``import openvino`` also imports its model converter
(``openvino.tools.ovc``, with argparse, multiprocessing, numpy.ma and telemetry) and every
opset module, none of which the runner uses, so :func:`openvino_bindings` loads the bindings'
extension module from the installed package without running the package's ``__init__``. Nothing in
``sys.modules`` is replaced or blocked: a later ``import openvino`` runs in full and gets the
very same binding module (an extension module is initialised once per process, and loading it
puts it in ``sys.modules``, where the package's own imports find it). The package binds it as its
attribute ``openvino._pyopenvino`` only from 2026.0 on; before that, only ``sys.modules`` has it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError
from edgeseg.runtime.compiled_cache import CompiledModelCache
from edgeseg.runtime.runners.base import ArtifactRunner, engine_message


BINDINGS = "openvino._pyopenvino"


def openvino_bindings():
    """OpenVINO's runtime binding module, the one ``import openvino`` builds its API on.

    Already imported (by the application or an earlier runner): that module. Otherwise its
    extension file is loaded from the installed ``openvino`` package directly, under its own
    name. Where that is not possible (no such file in this OpenVINO release, Windows, where the
    package's ``__init__`` first adds its DLL folder to the search path) the package is
    imported as usual. MissingDependencyError naming the extra when OpenVINO is not installed.
    """
    loaded = sys.modules.get(BINDINGS) or getattr(sys.modules.get("openvino"), "_pyopenvino", None)
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("openvino")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = [os.path.join(folder, "_pyopenvino" + suffix) for folder in folders
             for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    path = next((f for f in files if os.path.isfile(f)), None)
    if path is not None and sys.platform != "win32":
        loader = importlib.machinery.ExtensionFileLoader(BINDINGS, path)
        module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(BINDINGS, path, loader=loader))
        try:
            loader.exec_module(module)
        except ImportError:  # e.g. a library it links against is missing: let the package's import say so
            module = None
        if module is not None:
            return module
    return OpenVinoRunner.import_library("the OpenVINO backend")._pyopenvino


def openvino_cache_key(version: str, device: str, threads: int, artifact: Path) -> str:
    """The engine key of an OpenVINO cache entry; libedgeseg builds the same string, so the C
    and the Python runtime share entries (same version, same compile settings). The artifact's
    resolved path is in it because OpenVINO names its blob after the model's path: two copies
    of a bundle get an entry each instead of adding blobs to one another's."""
    return f"openvino {version} {device} LATENCY f32 threads {threads} {artifact.resolve()}"


def compile_artifact(core, path: Path, device: str, config: dict):
    """``core.compile_model`` of the artifact: given its path, so that a cache hit skips reading
    and converting the ONNX graph. A Linux folder name that is not UTF-8 reaches Python as
    surrogate escapes, which OpenVINO before 2026.1 cannot encode (UnicodeEncodeError "surrogates
    not allowed"; 2026.1 and later take it): then the graph is read here and handed over from
    memory (OpenVINO's cache then keys the blob on the graph). The bundle has no external weights
    to find beside it: the Segmenter refuses such a graph before any engine reads it."""
    try:
        return core.compile_model(str(path), device, config)
    except UnicodeEncodeError:
        return core.compile_model(core.read_model(path.read_bytes()), device, config)


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
        ov = openvino_bindings()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if self.threads > 0:
            config["INFERENCE_NUM_THREADS"] = self.threads
        self._device = device
        # the build string (2026.4.1-22982-...), as libedgeseg records it: the wheel's version alone
        # does not tell two builds apart
        self.engine_version = ov.get_version()
        key = openvino_cache_key(self.engine_version, device, self.threads, self.path)
        cache = CompiledModelCache("openvino", self.entry.sha256, key)

        def compile_model(folder, hit):
            core = ov.Core()
            if folder is not None:
                core.set_property({"CACHE_DIR": str(folder)})
            return compile_artifact(core, self.path, device, config)

        try:
            compiled = cache.load(compile_model)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long messages
            raise BackendError(f"openvino could not load {self.path.name}: {engine_message(exc)}") from None
        self._request = compiled.create_infer_request()
        self._tensor = ov.Tensor
        # what the plugin chose: with no count given, the latency hint's share of the cores it may use
        self._threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))

    @property
    def device(self) -> str:
        return self._device.lower()

    @property
    def threads_used(self) -> int | None:
        return self._threads_used if self._device.upper() == "CPU" else None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # The batch (contiguous, float32, checked by Runner.infer) is lent to OpenVINO for this
        # synchronous call instead of copied into the request's own tensor; the outputs it
        # returns are views (share_outputs), read once below. OpenVINO lends only memory it may
        # write: a read-only batch (a request body the server read with np.frombuffer, a
        # read-only memory map) is copied instead of refused.
        self._request.infer(self._tensor(batch, shared_memory=bool(batch.flags.writeable)), True, False)
        # The request owns its output buffer and overwrites it on the next call.
        return self._request.get_output_tensor(0).data.copy()

    def _release(self) -> None:
        self._request = None
