"""ONNX Runtime runner: CPU, plus the CUDA and TensorRT execution providers when present."""

from __future__ import annotations

import importlib.util
import platform
import re
import sys
from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError
from edgeseg.runtime.compiled_cache import CompiledModelCache
from edgeseg.runtime.runners.base import ArtifactRunner, engine_message

OPTIMIZED_NAME = "model.onnx"
_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The libraries those providers live in: onnxruntime builds them as separate shared libraries
# next to its own (capi/libonnxruntime_providers_cuda.so, ..._tensorrt.so; .dll on Windows),
# which onnxruntime-gpu ships and the CPU wheel does not.
_GPU_PROVIDER_LIBRARIES = ("*onnxruntime_providers_cuda*", "*onnxruntime_providers_tensorrt*")
# onnxruntime's refusal of a graph that imports a domain at a version newer than it knows, even when
# no node uses that domain (ValidateOpsetForDomain): "Opset 5 is under development ... Current
# official support for domain ai.onnx.ml is till opset 4."
_NEWER_OPSET = re.compile(r"Opset (\d+) is under development.*support for domain (\S+) is till opset (\d+)", re.S)


def load_error(name: str, version: str, exc: Exception) -> BackendError:
    """The one-line error for onnxruntime ``version`` refusing to load artifact ``name``."""
    newer = _NEWER_OPSET.search(str(exc))
    if newer is None:
        return BackendError(f"onnxruntime could not load {name}: {engine_message(exc)}")
    wanted, domain, known = newer.groups()
    head = (f"onnxruntime {version} could not load {name}: it imports opset {wanted} of domain {domain}, "
            f"and this onnxruntime knows it up to opset {known}")
    if domain != "ai.onnx.ml":  # a domain the graph's nodes use: neither advice below is known to help
        said = " ".join(str(exc)[newer.start():].split())  # onnxruntime's words, past its C++ location
        return BackendError(f"{head} (onnxruntime: {said if len(said) <= 400 else said[:397] + '...'})")
    # INT8 graphs of bundles exported before the exporter dropped unused imports import ai.onnx.ml 5
    # (onnxruntime's quantiser writes every domain it knows, no node of ours uses it); onnxruntime
    # 1.18 is the first to take it.
    return BackendError(f"{head}; install onnxruntime>=1.18 or export the bundle again with this edgeseg, "
                        "which imports only the domains a graph uses")


def gpu_provider_library_installed() -> bool:
    """Whether the installed onnxruntime package holds a CUDA or TensorRT provider library,
    found by looking at its files, without importing it (an import costs tens of ms)."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    return any(next((Path(folder) / "capi").glob(pattern), None) is not None
               for folder in folders for pattern in _GPU_PROVIDER_LIBRARIES)


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def physical_cores() -> int | None:
    """The machine's physical CPU cores, from /proc/cpuinfo's (physical id, core id) pairs; None
    where it does not list them (not Linux, some ARM kernels)."""
    cores, package = set(), "0"
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


class OnnxRuntimeRunner(ArtifactRunner):
    """Run an ONNX artifact with ONNX Runtime.

    ``providers`` defaults to CPU only; pass e.g. ``["CUDAExecutionProvider",
    "CPUExecutionProvider"]`` to use a GPU. Sessions use full graph optimisation and
    ``threads`` intra-op threads.
    """

    name = "onnxruntime"
    format = "onnx"
    library = "onnxruntime"
    # the GPU and OpenVINO-provider builds install the same module under their own names
    distributions = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
    extra = "runtime"
    preference = {"int8": 6, "fp32": 8, "fp16": 11}

    def __init__(self, *args, providers: list[str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ort = self.import_library("the ONNX Runtime backend")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads > 0:
            options.intra_op_num_threads = self.threads
        # Idle worker threads would otherwise spin after each run and take the cores the
        # Segmenter's pre- and post-processing need between and during batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        available = ort.get_available_providers()
        wanted = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendError(f"onnxruntime: provider(s) {missing} not available here (available: {available})")
        self._session = self._cached_session(ort, options, wanted)
        self._providers = self._session.get_providers()
        self._input_name = self._session.get_inputs()[0].name
        self._output_name = self._session.get_outputs()[0].name

    def _cached_session(self, ort, options, providers: list[str]):
        """An InferenceSession, through the compiled-model cache on the CPU.

        CPU sessions keep ONNX Runtime's optimised graph (their cold start is mostly graph
        optimisation) as ``model.onnx`` of a cache entry keyed by the artifact's sha256, the
        onnxruntime version and the CPU's feature flags (the graph holds CPU-specific layouts;
        see edgeseg.runtime.compiled_cache); a verified hit loads it without optimising again.
        """
        def session(model: Path):
            try:
                return ort.InferenceSession(str(model), sess_options=options, providers=providers)
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
                raise load_error(self.path.name, ort.__version__, exc) from None

        if providers != ["CPUExecutionProvider"]:
            return session(self.path)
        flags = next((line for line in _cpuinfo() if line.startswith("flags")), platform.machine())
        cache = CompiledModelCache("onnxruntime", self.entry.sha256, f"onnxruntime {ort.__version__} {flags}")

        def build(folder: Path | None, hit: bool):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.optimized_model_filepath = ""
            if hit:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                return session(folder / OPTIMIZED_NAME)
            if folder is not None:
                options.optimized_model_filepath = str(folder / OPTIMIZED_NAME)
                options.log_severity_level = 3  # its "hardware specific graph" warning is why the key has the CPU flags
            return session(self.path)

        return cache.load(build)

    @property
    def device(self) -> str:
        return "cuda:0" if any(p in _GPU_PROVIDERS for p in self._providers) else "cpu"

    @staticmethod
    def gpu_providers() -> list[str]:
        """GPU execution providers this onnxruntime build offers (empty on CPU builds).

        A build without a CUDA or TensorRT provider library cannot offer one, so onnxruntime
        is asked (and imported) only where such a library is installed or onnxruntime is
        already imported: ``auto`` on a CPU-only install then never loads ONNX Runtime just to
        learn that it has no GPU runner. Where the library is installed the answer is
        onnxruntime's own ``get_available_providers()``, as before.
        """
        if "onnxruntime" not in sys.modules and not gpu_provider_library_installed():
            return []
        import onnxruntime as ort

        return [p for p in _GPU_PROVIDERS if p in ort.get_available_providers()]

    @property
    def threads_used(self) -> int | None:
        # ONNX Runtime does not report the size of its intra-op pool; left at 0 it is one thread
        # per physical core of the machine (its documented default, which ignores the affinity mask)
        if self.device != "cpu":
            return None
        return self.threads or physical_cores()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def _release(self) -> None:
        self._session = None


class OnnxRuntimeGpuRunner(OnnxRuntimeRunner):
    """ONNX Runtime on the GPU: its TensorRT and CUDA execution providers, CPU for the rest.

    Times include the copies between host and device: inputs and outputs are numpy arrays.
    """

    name = "onnxruntime-gpu"
    device_kind = "cuda"
    preference = {"fp16": 3, "fp32": 4}

    @classmethod
    def available(cls) -> bool:
        """True only with a CUDA or TensorRT provider: the CPU wheel imports as onnxruntime too."""
        return super().available() and bool(cls.gpu_providers())

    def __init__(self, *args, **kwargs) -> None:
        gpu = self.gpu_providers()
        if not gpu:
            raise BackendError("onnxruntime-gpu: this onnxruntime build has no CUDA or TensorRT execution provider "
                               "(pip install onnxruntime-gpu)")
        super().__init__(*args, providers=[*gpu, "CPUExecutionProvider"], **kwargs)
