"""The Triton Python-backend model behind the repositories ``edgeseg triton`` writes.

Each generated ``model.py`` puts edgeseg on ``sys.path`` and re-exports ``TritonPythonModel``
from here; the model's ``config.pbtxt`` says what it is:

- ``edgeseg_role: pipeline`` (``NAME-pipeline``): ``hu`` INT16 (N, H, W) and the optional
  ``spacing`` FP32 [3] (z, y, x in mm) in, ``labels`` UINT8 out, through
  ``Segmenter.predict_volume`` on the bundle copied beside it: the path of ``edgeseg predict``
  and of ``edgeseg serve``'s pipeline model, with the same input checks.
- ``edgeseg_role: network`` (``NAME`` in a ``--kind KIND_CPU`` repository): the pre-processed
  tensor in, logits out, on edgeseg's runtime, so the repository loads in a Triton that has
  only the Python backend. Requests Triton hands over together are run as one batch.

Tensors cross the backend boundary through DLPack rather than ``as_numpy``/``Tensor(...)``,
whose compiled numpy interface reads wrong values under numpy 2; under numpy 1.x the responses
are made with ``Tensor(...)`` (see ``_tensor``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edgeseg.errors import BackendError, EdgesegError
from edgeseg.serve.model_inputs import (DEFAULT_MAX_SIDE, PIPELINE_SUFFIX, SPACING_INPUT, check_network_input,
                                         check_pipeline_input, check_pipeline_spacing)
from edgeseg.serve.models import response_parameters

# numpy 2 frees a DLPack capsule only under its original name; the backend renames the capsules
# it consumes, so numpy reports each one as an unraisable error although nothing leaks (the
# backend calls the tensor's deleter itself). Only that report is dropped.
_CAPSULE_REPORT = "PyCapsule_GetPointer called with incorrect name"
_NUMPY_1 = np.lib.NumpyVersion(np.__version__) < "2.0.0"


def _quiet_capsule_reports() -> None:
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, ValueError) and str(unraisable.exc_value) == _CAPSULE_REPORT):
            previous(unraisable)

    sys.unraisablehook = hook


def _array(pb_utils, request, name: str, optional: bool = False) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if optional:
            return None
        raise EdgesegError(f"request has no input {name!r}")
    return np.array(np.from_dlpack(tensor), copy=True)  # own the bytes: Triton reuses its buffer


def _tensor(pb_utils, name: str, array: np.ndarray):
    array = np.ascontiguousarray(array)
    if _NUMPY_1:
        # numpy 1.x's capsule deleter meets the backend's renamed capsule by reporting an error
        # about the capsule it is freeing, which frees it again: the stub died (a segmentation
        # fault) at the first response. Its compiled numpy interface is right under numpy 1.x.
        return pb_utils.Tensor(name, array)
    return pb_utils.Tensor.from_dlpack(name, array.__dlpack__())


def _response(pb_utils, tensors: list, parameters: dict):
    """A response carrying ``parameters`` (the classes and the provenance record), as ``edgeseg
    serve``'s do. Python backends before Triton 25.02 take no response parameters: their responses
    carry the tensors alone, and the model's configuration (``edgeseg_manifest_sha256``,
    ``edgeseg_backend``) says which model answers."""
    try:
        return pb_utils.InferenceResponse(output_tensors=tensors, parameters=parameters)
    except TypeError:
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _refusal(pb_utils, exc: EdgesegError):
    """The error response for a request the model refuses. Triton answers an error of code
    INVALID_ARG with HTTP 400, as ``edgeseg serve`` does; a runner's failure (BackendError) is the
    server's, 500. Python-backend stubs before the error codes take the message alone (500)."""
    code = None if isinstance(exc, BackendError) else getattr(pb_utils.TritonError, "INVALID_ARG", None)
    error = pb_utils.TritonError(str(exc)) if code is None else pb_utils.TritonError(str(exc), code)
    return pb_utils.InferenceResponse(error=error)


class TritonPythonModel:
    """Triton's entry points: ``initialize``, ``execute`` (a list of requests), ``finalize``."""

    def initialize(self, args: dict) -> None:
        """Load the bundle copied beside this model with the backend its config names."""
        from edgeseg.runtime.segmenter import Segmenter

        _quiet_capsule_reports()
        config = json.loads(args["model_config"])
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        self.role = params.get("edgeseg_role", "")
        if self.role not in ("network", "pipeline"):
            raise EdgesegError(f"model {config['name']!r}: parameter edgeseg_role must be network or pipeline, "
                               f"got {self.role!r}")
        self.name = config["name"]
        self.max_batch = int(config.get("max_batch_size", 0)) or int(params.get("edgeseg_max_slices", "1"))
        folder = Path(args["model_repository"]) / args["model_version"] / "bundle"
        backend = params.get("edgeseg_backend", "onnxruntime:fp32")
        self.segmenter = Segmenter.load(folder, backend=backend,
                                        threads=int(params.get("edgeseg_threads", "0")),
                                        tta=params.get("edgeseg_tta", "none") if self.role == "pipeline" else "none")
        # What every response carries, as edgeseg serve's do, naming the bundle the repository was
        # written from: the model's own copy of its manifest holds only the one artifact it runs.
        self.parameters = response_parameters(self.segmenter)
        if params.get("edgeseg_manifest_sha256") and "manifest_sha256" in self.parameters:
            self.parameters["manifest_sha256"] = params["edgeseg_manifest_sha256"]

    def execute(self, requests: list) -> list:
        """One response per request, in order; a request the model cannot take gets an error."""
        import triton_python_backend_utils as pb_utils

        if self.role == "pipeline":
            return [self._pipeline(pb_utils, request) for request in requests]
        return self._network(pb_utils, requests)

    def _pipeline(self, pb_utils, request):
        network = self.name.removesuffix(PIPELINE_SUFFIX)
        try:
            hu = _array(pb_utils, request, "hu")
            stack = check_pipeline_input(hu, self.segmenter, network, self.max_batch, max_side=DEFAULT_MAX_SIDE)
            # refused here, before the network runs, where the bundle needs a spacing and none came
            spacing = check_pipeline_spacing(_array(pb_utils, request, SPACING_INPUT, optional=True), self.segmenter,
                                             network)
            labels = self.segmenter.predict_volume(stack, spacing=spacing).reshape(hu.shape)
        except EdgesegError as exc:
            return _refusal(pb_utils, exc)
        return _response(pb_utils, [_tensor(pb_utils, "labels", labels)], self.parameters)

    def _network(self, pb_utils, requests: list) -> list:
        manifest = self.segmenter.manifest
        in_name, out_name = manifest.inputs[0].name, manifest.outputs[0].name
        responses: list = [None] * len(requests)
        batches: list[tuple[int, np.ndarray]] = []
        for index, request in enumerate(requests):
            try:
                batch = check_network_input(_array(pb_utils, request, in_name), self.segmenter, self.name,
                                            manifest.max_batch)
                batches.append((index, batch))
            except EdgesegError as exc:
                responses[index] = _refusal(pb_utils, exc)
        if batches:
            stacked = np.concatenate([batch for _, batch in batches])
            step = manifest.max_batch  # Triton's batch never exceeds it; a config edited by hand might
            logits = np.concatenate([self.segmenter.infer(stacked[s:s + step]) for s in range(0, len(stacked), step)])
            start = 0
            for index, batch in batches:
                rows = logits[start:start + len(batch)]
                responses[index] = _response(pb_utils, [_tensor(pb_utils, out_name, rows)], self.parameters)
                start += len(batch)
        return responses

    def finalize(self) -> None:
        """Release the runner."""
        self.segmenter.close()
