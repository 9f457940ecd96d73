"""Runner: the one interface every backend implements, and the description it gives of itself.

A Runner class says what it is in class attributes (``name``, ``format``, ``precisions``,
``library``, ``distributions``, ``extra``, ``device_kind``, ``preference``, ``named_only``); the
registry, backend selection, the probe and its cache key, the export gate, ``inspect``, ``bench``,
``edgeseg version`` and manifest validation read those and nothing else, so a backend is one file. The
public ``infer`` validates the batch against the model's input tensor (dtype, rank, channel
and spatial sizes, batch limit, finite values) once, here, then calls the subclass's
``_infer``. Runners are context managers; ``close`` releases the backend's session (the
subclass's ``_release``) once any call in progress has returned, and a closed runner refuses
``infer`` with a BackendError. ``infer`` is thread-safe: calls on one runner take turns, because
several backends (OpenVINO infer requests, TensorRT contexts) are not.
"""

from __future__ import annotations

import abc
import importlib.util
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeseg.errors import BackendError, DataError, EdgesegError, require
from edgeseg.runtime import fork_guard
from edgeseg.runtime.manifest import ArtifactEntry, TensorInfo

# More CPU threads than any machine this runs on has; a larger figure is a typing error, and ONNX
# Runtime would try to start that many threads.
MAX_THREADS = 1024


def check_threads(threads: int) -> int:
    """``threads`` as an int; BackendError unless 0 (the backend's default) .. MAX_THREADS."""
    try:
        whole = not isinstance(threads, bool) and int(threads) == threads
    except (TypeError, ValueError, OverflowError):  # None, a string, NaN, inf
        whole = False
    if not whole or not 0 <= threads <= MAX_THREADS:
        raise BackendError(f"threads must be between 0 (the backend's default) and {MAX_THREADS}, got {threads!r}")
    return int(threads)


class Runner(abc.ABC):
    """Run a segmentation network: ``infer(batch NCHW) -> logits NCHW`` (float32).

    Args:
        input_info: the model's input tensor (name, shape with -1 for batch, dtype).
        output_info: its output tensor.
        max_batch: the largest batch the model takes.
        threads: CPU threads the backend may use (0: the backend's default).
        precision: the precision of the weights it runs (``fp32``, ``fp16``, ``int8``).
        artifact: what it runs, for logs (a bundle file name, a URL, ``in-memory``).
    """

    #: backend name as used by ``--backend``
    name: ClassVar[str] = ""
    #: the bundle artifact format it loads; None for a runner that loads no bundle file
    format: ClassVar[str | None] = None
    #: the artifact precisions it runs
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8")
    #: the top-level module it needs, checked without importing it
    library: ClassVar[str | None] = None
    #: the pip distributions that may install ``library`` (first installed wins; default: the
    #: module's own name): their versions key the probe cache and are reported with results
    distributions: ClassVar[tuple[str, ...]] = ()
    #: the pip extra of edgeseg that installs that module (None: the runner's own distribution
    #: depends on it); ``import_library`` names it
    extra: ClassVar[str | None] = None
    #: "cpu" or "cuda": where it runs
    device_kind: ClassVar[str] = "cpu"
    #: precision -> rank in the order ``auto`` tries without a probe (lower first)
    preference: ClassVar[dict[str, int]] = {}
    #: why ``auto`` never loads this runner on any machine (it runs only when named), or None
    named_only: ClassVar[str | None] = None

    def __init__(self, input_info: TensorInfo, output_info: TensorInfo, max_batch: int, threads: int = 0, *,
                 precision: str = "fp32", artifact: str = "") -> None:
        self.input_info = input_info
        self.output_info = output_info
        self.max_batch = int(max_batch)
        self.threads = check_threads(threads)
        self.artifact = artifact
        self._precision = precision
        self._lock = threading.Lock()
        self._closed = False
        self._pid = fork_guard.track(self)

    @classmethod
    def available(cls) -> bool:
        """Whether this machine can run the backend at all (its library is installed)."""
        if cls.library is None:
            return True
        try:
            return importlib.util.find_spec(cls.library) is not None
        except (ImportError, ValueError):  # a broken or deliberately blocked install
            return False

    @classmethod
    def import_library(cls, purpose: str, module: str | None = None):
        """Import ``module`` (default: ``library``) for ``purpose``: a missing or broken install is
        one error naming ``extra``, the same extra every other message about this runner names."""
        return require(module or cls.library, cls.extra, purpose)

    @classmethod
    def install_hint(cls) -> str:
        """What installs the library: ``pip install 'edgeseg[EXTRA]'``, or for a runner whose own
        distribution brings it (no ``extra``), ``pip install DISTRIBUTION``."""
        return f"pip install 'edgeseg[{cls.extra}]'" if cls.extra else f"pip install {cls.library_distributions()[0]}"

    @classmethod
    def library_distributions(cls) -> tuple[str, ...]:
        """The distributions whose installed version is this runner's library version."""
        if cls.library is None:
            return ()
        return cls.distributions or (cls.library,)

    @property
    def precision(self) -> str:
        return self._precision

    @property
    def device(self) -> str:
        """Where the model runs, e.g. ``cpu`` or ``cuda:0``."""
        return "cpu"

    @property
    def threads_used(self) -> int | None:
        """The CPU threads the backend computes with (``threads``, or the count its default gave);
        None where it cannot say, or where the work is not done by CPU threads of this process
        (a GPU engine, a remote server)."""
        return None

    @property
    def run_on(self) -> str:
        """``backend-device`` as the parity report names a run, e.g. ``onnxruntime-cpu``."""
        return f"{self.name}-{self.device.split(':')[0]}"

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.input_info.dtype)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Validate ``batch`` (N, C, H, W) and return the model's logits as float32 (N, K, H, W).

        An error the engine raises while running is a BackendError naming the runner and what it
        runs (the engine's whole message on one line); logits of another shape than the output
        tensor the bundle declares (other classes, another size: a graph that does not match its
        manifest) are a BackendError too, never labels the bundle does not name."""
        self.check_batch(batch)
        fork_guard.check_process(self._pid, f"the {self.name} runner of {self.artifact}")
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.name}: the runner of {self.artifact} is closed; load the bundle again")
            try:
                out = self._infer(np.ascontiguousarray(batch))
            except (EdgesegError, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - each engine raises its own types
                raise BackendError(f"{self.name} could not run {self.artifact}: {engine_message(exc)}") from None
        out = np.asarray(out, dtype=np.float32)
        expected = (batch.shape[0], *self.output_info.shape[1:])
        if out.shape != expected and not (len(out.shape) == len(expected) and all(
                w == -1 or g == w for g, w in zip(out.shape, expected))):
            raise BackendError(f"{self.name}: {self.artifact} returned logits of shape {list(out.shape)}; the bundle "
                               f"declares {list(expected)} (a model that does not match its manifest)")
        return out

    def check_batch(self, batch: np.ndarray) -> None:
        """DataError naming the first way ``batch`` differs from what the model takes."""
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
        """Release the backend's resources; the runner is unusable afterwards. A call running in
        another thread finishes first: the engine's buffers (TensorRT's device memory) are not
        freed under it. Closing twice does nothing. In a process forked after loading it, closing
        only marks it closed: the engine belongs to the parent (``edgeseg.runtime.fork_guard``)."""
        if fork_guard.forked_away(self._pid):
            self._closed = True
            return
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _release(self) -> None:
        """Free what the backend holds (its session, request or context); called once, by ``close``."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict[str, str]:
        """Name, artifact, precision and device, for logs and reports."""
        return {"backend": self.name, "artifact": self.artifact, "precision": self.precision, "device": self.device}


class ArtifactRunner(Runner):
    """A runner that loads one artifact file of a bundle.

    Args:
        path: the artifact file.
        entry: its manifest entry (format, precision).
        input_info, output_info, max_batch, threads: as for :class:`Runner`.
    """

    def __init__(self, path: str | Path, entry: ArtifactEntry, input_info: TensorInfo,
                 output_info: TensorInfo, max_batch: int, threads: int = 0) -> None:
        super().__init__(input_info, output_info, max_batch, threads, precision=entry.precision, artifact=entry.file)
        self.path = Path(path)
        self.entry = entry


def writeable(batch: np.ndarray) -> np.ndarray:
    """``batch``, copied when it is read-only, for a library that takes numpy memory as its own to
    write (torch warns that writing it is undefined): a read-only batch, such as a request body
    the server read with np.frombuffer, is copied rather than lent."""
    return batch if batch.flags.writeable else batch.copy()


def engine_message(exc: BaseException, limit: int = 400) -> str:
    """An engine's error as one line: its lines joined, without OpenVINO's 'Exception from
    FILE:LINE:' location lines (the cause comes after them), cut at ``limit`` characters."""
    import re

    lines = [ln.strip() for ln in str(exc).splitlines()]
    kept = [ln for ln in lines if ln and not re.fullmatch(r"Exception from \S+:\d+:?", ln)]
    text = " ".join(kept) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
