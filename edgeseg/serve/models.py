"""The two models one server exposes: ``NAME``, the network, and ``NAME-pipeline``, HU to labels.

``NAME`` takes the pre-processed (N, 1, H, W) float32 tensor and returns logits, as Triton's
ONNX model does. ``NAME-pipeline`` takes CT values, ``hu`` of INT16, UINT16 or FP32 with shape
(H, W) or (N, H, W) at any size within the server's limits, and returns ``labels`` UINT8 of the
same shape, through ``Segmenter.predict_volume``: the path of ``edgeseg predict``. Each model
checks what it is sent before it queues it, and FP32 values meant for the other model (HU
sent to the network, a normalised tensor sent to the pipeline) are refused with a message
naming the model the client probably meant.
"""

from __future__ import annotations

import abc
import threading
import time
from dataclasses import dataclass

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.input_checks import HU_LIMITS, checked_hu
from edgeseg.serve.batcher import MicroBatcher
from edgeseg.serve.protocol import NUMPY_TO_DATATYPE

PIPELINE_SUFFIX = "-pipeline"
PIPELINE_DATATYPES = ("INT16", "UINT16", "FP32")
# How far outside the normalised range the network's input may stray, in widths of that range,
# before it is taken for HU: augmented or differently rounded tensors stay well within it.
NETWORK_RANGE_SLACK = 4.0


class ModelInputError(DataError):
    """A request the model cannot take; answered 400 with this message."""


@dataclass
class InferenceStats:
    """Counts and nanoseconds in Triton's statistics layout (successes, failures, model calls)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    execution_count: int = 0
    compute_ns: int = 0
    last_inference_ms: int = 0

    def record(self, ok: bool, seconds: float, slices: int) -> None:
        """Count one finished request."""
        ns = int(seconds * 1e9)
        if ok:
            self.success_count += 1
            self.success_ns += ns
            self.inference_count += slices
        else:
            self.fail_count += 1
            self.fail_ns += ns
        self.last_inference_ms = int(time.time() * 1000)

    def to_dict(self, name: str) -> dict:
        """One entry of ``model_stats`` as tritonclient's ``get_inference_statistics`` reads it."""
        return {"name": name, "version": "1", "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": {"count": self.success_count, "ns": self.success_ns},
                                    "fail": {"count": self.fail_count, "ns": self.fail_ns},
                                    "compute_infer": {"count": self.execution_count, "ns": self.compute_ns}}}


def normalised_range(spec) -> tuple[float, float]:
    """The values the spec's pre-processing produces: its window mapped by scale and offset."""
    scale, offset = spec.scale_offset
    ends = sorted(scale * w + offset for w in spec.window)
    return ends[0], ends[1]


class ServedModel(abc.ABC):
    """One model of the server: its tensors, checks, batcher and statistics."""

    name: str
    input_name: str
    output_name: str
    platform: str

    def __init__(self, name: str, infer, max_batch: int, queue_size: int, max_delay: float, on_batch, lock,
                 key=None) -> None:
        self.name = name
        self.max_batch = max_batch
        self.stats = InferenceStats()

        def timed(batch: np.ndarray) -> np.ndarray:
            with lock:  # one model call at a time: runners (OpenVINO's request) are not reentrant
                start = time.perf_counter()
                result = infer(batch)
                self.stats.compute_ns += int((time.perf_counter() - start) * 1e9)
                self.stats.execution_count += 1
            return result

        self.batcher = MicroBatcher(timed, max_batch=max_batch, queue_size=queue_size, max_delay=max_delay,
                                    on_batch=on_batch, key=key)

    @abc.abstractmethod
    def metadata(self) -> dict:
        """The KServe v2 model metadata."""

    def checked(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The one input, validated, as the batcher takes it (N leading rows)."""
        unknown = sorted(set(inputs) - {self.input_name})
        if unknown or self.input_name not in inputs:
            raise ModelInputError(f"model {self.name!r} takes one input {self.input_name!r}, got {sorted(inputs)}")
        return self._check(inputs[self.input_name])

    @abc.abstractmethod
    def _check(self, array: np.ndarray) -> np.ndarray:
        """``array`` as the batcher takes it, or ModelInputError."""

    def output(self, request_shape: tuple[int, ...], result: np.ndarray) -> np.ndarray:
        """The response tensor for one request (of input shape ``request_shape``) from its rows."""
        return result

    def close(self) -> None:
        """Stop the batcher."""
        self.batcher.close()


class NetworkModel(ServedModel):
    """``NAME``: the network on the pre-processed tensor, micro-batched."""

    def __init__(self, segmenter, name: str, **batching) -> None:
        super().__init__(name, segmenter.infer, **batching)
        self.segmenter = segmenter
        manifest = segmenter.manifest
        self.in_info, self.out_info = manifest.inputs[0], manifest.outputs[0]
        self.input_name, self.output_name = self.in_info.name, self.out_info.name
        self.platform = f"edgeseg_{segmenter.backend}"
        self.range = normalised_range(segmenter.spec)

    def metadata(self) -> dict:
        tensor = lambda info: {"name": info.name, "datatype": NUMPY_TO_DATATYPE[np.dtype(info.dtype)],  # noqa: E731
                               "shape": list(info.shape)}
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [tensor(self.in_info)], "outputs": [tensor(self.out_info)]}

    def _check(self, batch: np.ndarray) -> np.ndarray:
        pipeline = self.name + PIPELINE_SUFFIX
        if batch.dtype != np.float32:
            hint = f"; CT values (INT16, UINT16, FP32 HU) go to model {pipeline!r}" if batch.dtype.kind in "iu" else ""
            raise ModelInputError(f"model {self.name!r} takes the pre-processed FP32 tensor, got "
                                  f"{NUMPY_TO_DATATYPE.get(batch.dtype, batch.dtype)}{hint}")
        if batch.ndim == 4 and batch.shape[0] > self.max_batch:
            raise ModelInputError(f"a request holds at most {self.max_batch} slices (--max-batch), got {batch.shape[0]}")
        self.segmenter.runner.check_batch(batch)  # shape, batch size, NaN/inf
        low, high = self.range
        slack = NETWORK_RANGE_SLACK * (high - low)
        got_low, got_high = float(batch.min()), float(batch.max())
        if got_low < low - slack or got_high > high + slack:
            raise ModelInputError(
                f"model {self.name!r} takes the tensor normalised to {low:g}..{high:g} (window "
                f"{self.segmenter.spec.window[0]:g}..{self.segmenter.spec.window[1]:g} HU); values span "
                f"{got_low:g}..{got_high:g}, which looks like HU: send CT values to model {pipeline!r}")
        return np.ascontiguousarray(batch)


class PipelineModel(ServedModel):
    """``NAME-pipeline``: HU slices in, labels out, through ``Segmenter.predict_volume``."""

    input_name, output_name, platform = "hu", "labels", "edgeseg_pipeline"

    def __init__(self, segmenter, network_name: str, max_side: int, **batching) -> None:
        super().__init__(network_name + PIPELINE_SUFFIX, segmenter.predict_volume,
                         key=lambda b: (b.shape[1:], b.dtype), **batching)
        self.segmenter = segmenter
        self.network_name = network_name
        self.max_side = max_side
        self.range = normalised_range(segmenter.spec)

    def metadata(self) -> dict:
        labels = {str(k): v for k, v in sorted(self.segmenter.labels.items())}
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [{"name": "hu", "datatype": "INT16", "shape": [-1, -1, -1]}],
                "outputs": [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]}],
                "parameters": {"labels": labels, "input_datatypes": list(PIPELINE_DATATYPES),
                               "input_shapes": ["[H, W]", "[N, H, W]"], "max_slices": self.max_batch,
                               "max_side": self.max_side, "window": list(self.segmenter.spec.window)}}

    def _check(self, hu: np.ndarray) -> np.ndarray:
        datatype = NUMPY_TO_DATATYPE.get(hu.dtype, str(hu.dtype))
        if datatype not in PIPELINE_DATATYPES:
            raise ModelInputError(f"model {self.name!r} takes hu as one of {list(PIPELINE_DATATYPES)}, got {datatype}")
        if hu.ndim not in (2, 3):
            hint = f"; the pre-processed (N, 1, H, W) tensor goes to model {self.network_name!r}" if hu.ndim == 4 else ""
            raise ModelInputError(f"model {self.name!r} takes hu of shape [H, W] or [N, H, W], got {list(hu.shape)}{hint}")
        stack = hu[None] if hu.ndim == 2 else hu
        if not 1 <= stack.shape[0] <= self.max_batch:
            raise ModelInputError(f"a request holds 1..{self.max_batch} slices (--max-batch), got {stack.shape[0]}")
        if max(stack.shape[1:]) > self.max_side:
            raise ModelInputError(f"slices of {stack.shape[1]}x{stack.shape[2]} exceed the server's limit of "
                                  f"{self.max_side} pixels a side")
        if hu.dtype == np.float32:
            self._check_fp32_hu(stack)
        return np.ascontiguousarray(checked_hu(stack, self.segmenter.spec, ndim=3,
                                               resize=self.segmenter.manifest.resize_input, what="input 'hu'"))

    def _check_fp32_hu(self, stack: np.ndarray) -> None:
        finite = np.isfinite(stack)
        if not finite.all():
            raise ModelInputError(f"input 'hu' holds {int(stack.size - np.count_nonzero(finite))} NaN or infinite value(s)")
        got_low, got_high = float(stack.min()), float(stack.max())
        low, high = self.range
        margin = 0.5 * (high - low)
        if got_low < HU_LIMITS[0] or got_high > HU_LIMITS[1]:
            raise ModelInputError(f"input 'hu' values span {got_low:g}..{got_high:g}, which cannot be CT values "
                                  f"(HU lie within {HU_LIMITS[0]:g}..{HU_LIMITS[1]:g})")
        if low - margin <= got_low and got_high <= high + margin:
            raise ModelInputError(
                f"input 'hu' values span {got_low:g}..{got_high:g}, the range of the pre-processed tensor "
                f"({low:g}..{high:g}), not HU (air is about -1000): send CT values here, or the pre-processed "
                f"(N, 1, H, W) tensor to model {self.network_name!r}")

    def output(self, request_shape: tuple[int, ...], result: np.ndarray) -> np.ndarray:
        return result.reshape(request_shape)  # an (H, W) request gets (H, W) labels


def served_models(segmenter, config, on_batch, lock: threading.Lock) -> dict[str, ServedModel]:
    """Both models of ``segmenter`` by name; ``lock`` is held around every model call."""
    max_batch = min(config.max_batch, segmenter.manifest.max_batch)
    batching = dict(max_batch=max_batch, queue_size=config.queue_size, max_delay=config.max_delay_s,
                    on_batch=on_batch, lock=lock)
    network = NetworkModel(segmenter, config.model_name, **batching)
    pipeline = PipelineModel(segmenter, config.model_name, config.max_side, **batching)
    return {network.name: network, pipeline.name: pipeline}
