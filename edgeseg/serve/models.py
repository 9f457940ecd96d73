"""The two models one server exposes: ``NAME``, the network, and ``NAME-pipeline``, HU to labels.

``NAME`` takes the pre-processed (N, 1, H, W) float32 tensor and returns logits, as Triton's
ONNX model does. ``NAME-pipeline`` takes CT values, ``hu`` of INT16, UINT16 or FP32 with shape
(H, W) or (N, H, W) at any size within the server's limits, and returns ``labels`` UINT8 of the
same shape, through ``Segmenter.predict_volume``: the path of ``edgeseg predict``. Requests are
micro-batched slice by slice, so the bundle's 3-D component filters run on each (N, H, W)
request on its own, after the batch, never across requests, with the request's optional
``spacing`` (FP32 [3], z, y, x in mm; needed where a class removes components by mL, unused
otherwise). Each model checks what it is sent
(``edgeseg.serve.model_inputs``) before it queues it.
"""

from __future__ import annotations

import abc
import threading
import time

import numpy as np

from edgeseg.errors import DataError
from edgeseg.serve.batcher import BatchTiming, MicroBatcher
from edgeseg.serve.model_inputs import (PIPELINE_DATATYPES, PIPELINE_SUFFIX, SPACING_INPUT, ModelInputError,
                                        check_network_input, check_network_shape, check_pipeline_input,
                                        check_pipeline_shape, check_pipeline_spacing)
from edgeseg.serve.protocol import NUMPY_TO_DATATYPE


REQUEST_PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


class InferenceStats:
    """Counts and nanoseconds in the layout of Triton's statistics extension.

    Per successful request: ``success`` (decoding the request to its encoded response), ``queue``
    (waiting in the micro-batcher, and for the model lock, until its batch starts),
    ``compute_input`` (decoding the request and checking its input), ``compute_infer`` (the model
    call of its batch) and ``compute_output`` (post-processing and encoding the response); per
    failed request ``fail``. Per batch size run: its model calls' ``compute_input`` (assembling
    the batch), ``compute_infer`` and ``compute_output`` (splitting the result by request).
    There is no response cache: ``cache_hit`` and ``cache_miss`` stay 0.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # requests record on the event loop, batches on the batcher's thread
        self._requests = {key: [0, 0] for key in ("success", "fail", *REQUEST_PHASES)}
        self._batches: dict[int, dict[str, list[int]]] = {}
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def record_success(self, ns: int, slices: int, **phases: int) -> None:
        """Count one answered request: its total and each of REQUEST_PHASES, in nanoseconds."""
        with self._lock:
            for key, value in (("success", ns), *((phase, phases[phase]) for phase in REQUEST_PHASES)):
                self._requests[key][0] += 1
                self._requests[key][1] += int(value)
            self.inference_count += slices
            self.last_inference_ms = int(time.time() * 1000)

    def record_failure(self, ns: int) -> None:
        """Count one request that failed after it was decoded."""
        with self._lock:
            self._requests["fail"][0] += 1
            self._requests["fail"][1] += int(ns)
            self.last_inference_ms = int(time.time() * 1000)

    def record_batch(self, timing: BatchTiming) -> None:
        """Count one model call."""
        with self._lock:
            entry = self._batches.setdefault(timing.size, {phase: [0, 0] for phase in BATCH_PHASES})
            for phase, ns in zip(BATCH_PHASES, (timing.input_ns, timing.infer_ns, timing.output_ns)):
                entry[phase][0] += 1
                entry[phase][1] += ns
            self.execution_count += 1

    def to_dict(self, name: str) -> dict:
        """One entry of ``model_stats`` as tritonclient's ``get_inference_statistics`` (and
        perf_analyzer) reads it."""

        def duration(pair: list[int]) -> dict:
            return {"count": pair[0], "ns": pair[1]}

        with self._lock:
            stats = {key: duration(pair) for key, pair in self._requests.items()}
            stats.update(cache_hit=duration([0, 0]), cache_miss=duration([0, 0]))
            batches = [{"batch_size": size, **{phase: duration(entry[phase]) for phase in BATCH_PHASES}}
                       for size, entry in sorted(self._batches.items())]
            return {"name": name, "version": "1", "last_inference": self.last_inference_ms,
                    "inference_count": self.inference_count, "execution_count": self.execution_count,
                    "inference_stats": stats, "batch_stats": batches}


def class_parameters(labels: dict[int, str]) -> dict:
    """What the model's outputs mean, for its metadata: ``labels`` (value -> class name, the
    channel order of the logits and the values of the label maps) and ``classes`` (each
    foreground class with the codes its DICOM SEG segment carries)."""
    from edgeseg.runtime.segment_codes import class_codings

    return {"labels": {str(k): v for k, v in sorted(labels.items())}, "classes": class_codings(labels)}


def response_parameters(segmenter) -> dict[str, str]:
    """The parameters of every inference response of ``segmenter``'s models, here and in the
    Triton repository's Python-backend models: ``classes`` and the provenance record."""
    from edgeseg.runtime.provenance import provenance

    labels = segmenter.labels
    return {"classes": ",".join(labels[k] for k in sorted(labels)), **provenance(segmenter)}


class ServedModel(abc.ABC):
    """One model of the server: its tensors, checks, batcher and statistics."""

    name: str
    input_name: str
    output_name: str
    platform: str
    optional_inputs: tuple[str, ...] = ()

    def __init__(self, name: str, infer, max_batch: int, queue_size: int, max_delay: float, on_batch, lock,
                 key=None) -> None:
        self.name = name
        self.max_batch = max_batch
        self.stats = InferenceStats()

        def ran(timing: BatchTiming) -> None:
            self.stats.record_batch(timing)
            if on_batch is not None:
                on_batch(timing.size)

        # ``lock``: one model call at a time, as runners (OpenVINO's request) are not reentrant
        self.batcher = MicroBatcher(infer, max_batch=max_batch, queue_size=queue_size, max_delay=max_delay,
                                    on_batch=ran, key=key, lock=lock)

    @abc.abstractmethod
    def metadata(self) -> dict:
        """The KServe v2 model metadata."""

    def checked(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The main input, validated, as the batcher takes it (N leading rows); the optional
        inputs are checked here too, so that a request is refused before it is queued."""
        unknown = sorted(set(inputs) - {self.input_name, *self.optional_inputs})
        if unknown or self.input_name not in inputs:
            takes = f"one input {self.input_name!r}" + "".join(f", optional {n!r}" for n in self.optional_inputs)
            raise ModelInputError(f"model {self.name!r} takes {takes}, got {sorted(inputs)}")
        return self._check(inputs[self.input_name], inputs)

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """The limits that the declared ``shape`` of input ``name`` alone breaks (ModelInputError),
        checked before its values are decoded; :meth:`checked` checks the rest."""

    @abc.abstractmethod
    def _check(self, array: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """``array`` (the main input of ``inputs``) as the batcher takes it, or ModelInputError."""

    def output(self, inputs: dict[str, np.ndarray], result: np.ndarray) -> np.ndarray:
        """The response tensor for one request (of decoded ``inputs``, checked) from its rows."""
        return result

    def response_parameters(self) -> dict:
        """Parameters every inference response carries: ``classes``, the class names in label
        value (and logit channel) order, comma-separated, so a client reads labels without
        asking for the metadata first; and the provenance record
        (:func:`~edgeseg.runtime.provenance.provenance`: bundle, artifact, backend, edgeseg version),
        so that every answer says what made it."""
        return response_parameters(self.segmenter)

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

    def metadata(self) -> dict:
        def tensor(info) -> dict:
            return {"name": info.name, "datatype": NUMPY_TO_DATATYPE[np.dtype(info.dtype)], "shape": list(info.shape)}

        from edgeseg.runtime.provenance import provenance

        entry = getattr(self.segmenter.runner, "entry", None)
        # what a remote client checks against its bundle (the model file run, the batch limit) and
        # records with its results (the provenance record, as every response carries it)
        identity = {**provenance(self.segmenter), **({"artifact_sha256": entry.sha256} if entry is not None else {})}
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [tensor(self.in_info)], "outputs": [tensor(self.out_info)],
                "parameters": {**class_parameters(self.segmenter.labels), **identity, "max_batch": self.max_batch}}

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name == self.input_name:
            check_network_shape(shape, self.max_batch)

    def _check(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return check_network_input(batch, self.segmenter, self.name, self.max_batch)


class PipelineModel(ServedModel):
    """``NAME-pipeline``: HU slices in, labels out, through ``Segmenter.predict_volume``."""

    input_name, output_name, platform = "hu", "labels", "edgeseg_pipeline"
    optional_inputs = (SPACING_INPUT,)

    def __init__(self, segmenter, network_name: str, max_side: int, **batching) -> None:
        super().__init__(network_name + PIPELINE_SUFFIX, lambda b: segmenter.predict_volume(b, volume_filters=False),
                         key=lambda b: (b.shape[1:], b.dtype), **batching)
        self.segmenter = segmenter
        self.network_name = network_name
        self.max_side = max_side

    def metadata(self) -> dict:
        return {"name": self.name, "versions": ["1"], "platform": self.platform,
                "inputs": [{"name": "hu", "datatype": "INT16", "shape": [-1, -1, -1]},
                           {"name": SPACING_INPUT, "datatype": "FP32", "shape": [3], "optional": True}],
                "outputs": [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]}],
                "parameters": {**class_parameters(self.segmenter.labels), "input_datatypes": list(PIPELINE_DATATYPES),
                               "input_shapes": ["[H, W]", "[N, H, W]"], "max_slices": self.max_batch,
                               "max_side": self.max_side, "window": list(self.segmenter.spec.window),
                               "tta": self.segmenter.tta}}

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if name == self.input_name:
            check_pipeline_shape(shape, self.max_batch, self.max_side)

    def _check(self, hu: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        stack = check_pipeline_input(hu, self.segmenter, self.network_name, self.max_batch, self.max_side)
        spacing = check_pipeline_spacing(inputs.get(SPACING_INPUT), self.segmenter, self.network_name)
        try:  # per request, before batching joins it to others: with its own spacing, as predict_volume does
            self.segmenter.check_fov(stack.shape, spacing, "request")
        except DataError as exc:
            raise ModelInputError(str(exc)) from None
        return stack

    def output(self, inputs: dict[str, np.ndarray], result: np.ndarray) -> np.ndarray:
        # an (H, W) request gets (H, W) labels; an (N, H, W) request is one volume, with its own spacing
        spacing = check_pipeline_spacing(inputs.get(SPACING_INPUT), self.segmenter, self.network_name)
        return self.segmenter.filter_volume(result, spacing).reshape(inputs[self.input_name].shape)


def served_models(segmenter, config, on_batch, lock: threading.Lock) -> dict[str, ServedModel]:
    """Both models of ``segmenter`` by name; ``lock`` is held around every model call."""
    max_batch = min(config.max_batch, segmenter.manifest.max_batch)
    batching = dict(max_batch=max_batch, queue_size=config.queue_size, max_delay=config.max_delay_s,
                    on_batch=on_batch, lock=lock)
    # a network whose input fixes its batch at N takes requests of N rows (check_batch), one per call
    network = NetworkModel(segmenter, config.model_name, **{**batching, "max_batch": segmenter.fixed_batch or max_batch})
    pipeline = PipelineModel(segmenter, config.model_name, config.max_side, **batching)
    return {network.name: network, pipeline.name: pipeline}
