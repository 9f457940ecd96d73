"""TensorRT runner: a serialised engine (``model.*.plan``) run natively with TensorRT 10 / 11.

An engine only runs on the GPU model and TensorRT version that built it, so the manifest's
fingerprint is compared with this machine before deserialising; a mismatch is a BackendError,
which ``Segmenter.load(backend="auto")`` turns into a warning and a fall back to the next
backend. CUDA is driven through cuda-python (no torch). Timings include the host-to-device
copy of the batch and the device-to-host copy of the logits.
"""

from __future__ import annotations

import numpy as np

from edgeseg.errors import BackendError, MissingDependencyError
from edgeseg.runtime.runners.base import ArtifactRunner


def _cudart():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError:
            raise MissingDependencyError("cuda-python", TensorRTRunner.extra, "the TensorRT backend") from None
    return runtime


def _check(result, what: str):
    """cuda-python returns (error, *values); raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"tensorrt: {what} failed with CUDA error {int(err)}")
    return values[0] if len(values) == 1 else values


def machine_fingerprint() -> dict[str, str]:
    """GPU name, compute capability and TensorRT version of this machine (device 0)."""
    trt = TensorRTRunner.import_library("the TensorRT backend")
    props = _check(_cudart().cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name, "compute_capability": f"{props.major}.{props.minor}", "tensorrt": trt.__version__}


def fingerprint_mismatch(recorded: dict | None, here: dict[str, str]) -> str | None:
    """Why an engine built on ``recorded`` cannot run ``here``, or None when it can."""
    if not recorded:
        return "the manifest records no fingerprint for this engine"
    for key in ("compute_capability", "gpu", "tensorrt"):
        if key in recorded and str(recorded[key]) != here[key]:
            return f"engine built for {key} {recorded[key]!r}, this machine has {here[key]!r}"
    return None


class TensorRTRunner(ArtifactRunner):
    """Run a TensorRT engine artifact on GPU 0 (``pip install 'edgeseg[tensorrt]'``)."""

    name = "tensorrt"
    format = "tensorrt"
    library = "tensorrt"
    distributions = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")
    extra = "tensorrt"
    device_kind = "cuda"
    preference = {"fp16": 0, "int8": 1, "fp32": 2}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        trt = TensorRTRunner.import_library("the TensorRT backend")
        self._cuda = _cudart()
        reason = fingerprint_mismatch(self.entry.fingerprint, machine_fingerprint())
        if reason:
            raise BackendError(f"tensorrt: cannot run {self.path.name}: {reason}; rebuild it with 'edgeseg export'")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendError(f"tensorrt could not deserialise {self.path.name}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"tensorrt: {self.path.name} has inputs {inputs} and outputs {outputs}; expected one each")
        self._in_name, self._out_name = inputs[0], outputs[0]
        self._stream = _check(self._cuda.cudaStreamCreate(), "cudaStreamCreate")
        in_bytes = self.max_batch * int(np.prod(self.input_info.shape[1:])) * 4
        out_bytes = self.max_batch * int(np.prod(self.output_info.shape[1:])) * 4
        self._d_in = _check(self._cuda.cudaMalloc(in_bytes), "cudaMalloc")
        self._d_out = _check(self._cuda.cudaMalloc(out_bytes), "cudaMalloc")
        self._context.set_tensor_address(self._in_name, int(self._d_in))
        self._context.set_tensor_address(self._out_name, int(self._d_out))

    @property
    def device(self) -> str:
        return "cuda:0"

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        kind = cuda.cudaMemcpyKind
        out = np.empty((batch.shape[0], *self.output_info.shape[1:]), dtype=np.float32)
        self._context.set_input_shape(self._in_name, tuple(batch.shape))
        _check(cuda.cudaMemcpyAsync(self._d_in, batch.ctypes.data, batch.nbytes, kind.cudaMemcpyHostToDevice,
                                    self._stream), "copy to device")
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"tensorrt: execution of {self.path.name} failed")
        _check(cuda.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, kind.cudaMemcpyDeviceToHost,
                                    self._stream), "copy to host")
        _check(cuda.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def _release(self) -> None:
        if getattr(self, "_context", None) is not None:
            self._cuda.cudaFree(self._d_in)
            self._cuda.cudaFree(self._d_out)
            self._cuda.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = None
