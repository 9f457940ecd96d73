"""Runner: the one interface every backend implements.

The public ``infer`` validates the batch against the bundle's input tensor (dtype, rank,
channel and spatial sizes, batch limit, finite values) once, here, then calls the subclass's
``_infer``. Subclasses only load their artifact and run it. Runners are context managers;
``close`` releases the backend's session. ``infer`` is thread-safe: calls on one runner take
turns, because several backends (OpenVINO infer requests, TensorRT contexts) are not.
"""

from __future__ import annotations

import abc
import threading
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.manifest import ArtifactEntry, TensorInfo


class Runner(abc.ABC):
    """Run one bundle artifact: ``infer(batch NCHW) -> logits NCHW`` (float32).

    Args:
        path: the artifact file.
        entry: its manifest entry (format, precision).
        input_info: the bundle's input tensor (name, shape with -1 for batch, dtype).
        output_info: the bundle's output tensor.
        max_batch: the largest batch the artifact was exported for.
        threads: CPU threads the backend may use (0: the backend's default).
    """

    #: backend name as used by ``--backend`` (set by subclasses)
    name: str = ""
    #: the artifact format this runner loads
    format: str = ""

    def __init__(self, path: str | Path, entry: ArtifactEntry, input_info: TensorInfo,
                 output_info: TensorInfo, max_batch: int, threads: int = 0) -> None:
        self.path = Path(path)
        self.entry = entry
        self.input_info = input_info
        self.output_info = output_info
        self.max_batch = int(max_batch)
        self.threads = int(threads)
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        return self.entry.precision

    @property
    def device(self) -> str:
        """Where the model runs, e.g. ``cpu`` or ``cuda:0``."""
        return "cpu"

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_info.dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Validate ``batch`` (N, C, H, W) and return the model's logits as float32 (N, K, H, W)."""
        self.check_batch(batch)
        with self._lock:
            out = self._infer(np.ascontiguousarray(batch))
        return np.asarray(out, dtype=np.float32)

    def check_batch(self, batch: np.ndarray) -> None:
        """DataError naming the first way ``batch`` differs from what the artifact takes."""
        if not isinstance(batch, np.ndarray):
            raise DataError(f"{self.name}: input must be a numpy array, got {type(batch).__name__}")
        if batch.dtype != self.input_dtype:
            raise DataError(f"{self.name}: input dtype must be {self.input_dtype}, got {batch.dtype}")
        expected = self.input_info.shape
        if batch.ndim != len(expected):
            raise DataError(f"{self.name}: input must have {len(expected)} dimensions {list(expected)}, got shape {list(batch.shape)}")
        for axis, (got, want) in enumerate(zip(batch.shape, expected)):
            if want != -1 and got != want:
                raise DataError(f"{self.name}: input shape {list(batch.shape)} differs from {list(expected)} on axis {axis}")
        if not 1 <= batch.shape[0] <= self.max_batch:
            raise DataError(f"{self.name}: batch of {batch.shape[0]} is outside 1..{self.max_batch} (the exported maximum)")
        if not np.isfinite(batch).all():
            raise DataError(f"{self.name}: input holds NaN or infinite values")

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Run the validated batch; return logits (any float dtype, converted by ``infer``)."""

    def close(self) -> None:
        """Release the backend's resources; the runner is unusable afterwards."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict[str, str]:
        """Name, artifact, precision and device, for logs and reports."""
        return {"backend": self.name, "artifact": self.entry.file, "precision": self.precision, "device": self.device}
