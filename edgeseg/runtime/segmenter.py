"""Segmenter: the one inference path of edgeseg -- C pre-processing, a runner, C post-processing.

Everything that segments goes through it: ``edgeseg predict``, the server, evaluation (with
the in-memory torch runner), the export gate (the torch runner as reference, then each
artifact on each runner ``auto`` may pick) and the remote client (the remote runner).

``predict`` segments one HU slice, ``predict_volume`` a whole volume in batches; both return
uint8 labels at the input's size. In ``predict_volume``, where a core is free for it (a GPU
runner, or a CPU runner capped below the core count), a worker thread pre-processes batch i+1
and post-processes batch i-1 while batch i runs in the model: the C kernels and the backends
release the GIL, so they overlap on separate cores. A CPU runner using every core runs them
inline between batches instead (``Segmenter.overlap``). Input buffers are allocated once per segmenter and reused; a
lock makes concurrent calls from several threads take turns on them, and ``close`` waits for a call in progress.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.data.field_of_view import fov_check_mode, fov_problem
from edgeseg.data.volume import Volume
from edgeseg.errors import BackendError, BundleError, DataError
from edgeseg.kernels import checked_labels, filter_components, postprocess, preprocess
from edgeseg.progress import progress_bar
from edgeseg.runtime import fork_guard
from edgeseg.runtime.body_parts import body_part_warning
from edgeseg.runtime.input_checks import checked_hu
from edgeseg.runtime.manifest import Manifest, network_tensors, read_manifest, verify_artifacts
from edgeseg.runtime.postprocess_options import PostprocessOptions, voxel_ml
from edgeseg.runtime.runners.base import Runner
from edgeseg.runtime.runners.remote import is_remote
from edgeseg.runtime.selection import select_runner
from edgeseg.runtime.tta import check_tta, mirrored_logits
from edgeseg.spec import PreprocessSpec

if TYPE_CHECKING:  # imported where used: a first slice needs no thread pool
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

DEFAULT_BATCH = 8
# The C kernels run on one thread here: with more, their OpenMP workers keep spinning after each
# call and take the cores the model runs on (measured: volume throughput fell to a quarter).
KERNEL_THREADS = 1


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, as taskset or a container sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Segmenter:
    """Segment CT with a runner; :meth:`Segmenter.load` builds one from a bundle.

    Args:
        spec: the PreprocessSpec the model was trained with.
        labels: class number -> name (0 is background).
        runner: the backend running the network.
        postprocess: the bundle manifest's ``postprocess`` (per-class component filters and
            ``resize``, either layout; see ``edgeseg.runtime.postprocess_options``) or a
            ``PostprocessOptions``.
        max_batch: the most slices per runner call (default: the runner's limit).
        resize_input: False refuses slices of another size than the spec's instead of resizing.
        bundle, manifest: the bundle folder and its manifest, when loaded from one.
        tta: test-time mirroring of ``predict`` and ``predict_volume`` (``none``, ``flip``,
            ``mirror``; see ``edgeseg.runtime.tta``); ``infer`` and ``logits`` stay one pass.
        regions: whether the runner's outputs are a region model's scores (default: as the
            manifest says; a module's own ``regions``), which mirroring averages as regions.

    Example:
        >>> seg = Segmenter.load("runs/demo/bundle")          # doctest: +SKIP
        >>> mask = seg.predict(ct_slice_hu)                    # doctest: +SKIP
    """

    def __init__(self, spec: PreprocessSpec, labels: dict[int, str], runner: Runner,
                 postprocess: dict[str, Any] | PostprocessOptions | None = None,
                 max_batch: int | None = None, *, resize_input: bool = True, bundle: str | Path | None = None,
                 manifest: Manifest | None = None, tta: str = "none", regions: bool | None = None) -> None:
        self.spec = spec
        self.tta = check_tta(tta)
        # a region model's outputs are mirrored as regions (edgeseg.runtime.tta)
        self.regions = bool(manifest is not None and manifest.regions) if regions is None else bool(regions)
        self.labels = dict(labels)
        self.runner = runner
        self.max_batch = runner.max_batch if max_batch is None else int(max_batch)
        if not 1 <= self.max_batch <= runner.max_batch:
            raise DataError(f"max_batch must lie in 1..{runner.max_batch} (the runner's limit), got {max_batch!r}")
        self.resize_input = bool(resize_input)
        self.bundle = None if bundle is None else Path(bundle)
        self.manifest = manifest
        self.fov_check = "warn"  # load() reads the option or $EDGESEG_FOV_CHECK
        self._fov_said: set[str] = set()  # each FOV warning once: a server's requests repeat it
        if not isinstance(postprocess, PostprocessOptions):
            postprocess = PostprocessOptions.from_dict(postprocess, max(self.labels, default=0) + 1)
        self.postprocess = postprocess
        self.resize_mode = postprocess.resize
        # A model whose input fixes its batch gets that many slices per call (``_network`` pads).
        self.fixed_batch = max(0, runner.input_info.shape[0])
        self.batch_size = min(self.fixed_batch, self.max_batch) or max(1, min(self.max_batch, DEFAULT_BATCH))
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []
        self._worker: ThreadPoolExecutor | None = None
        self._closed = False
        self._pid = os.getpid()
        # Overlap pre/post-processing with inference only where a core is free for it: a GPU
        # runner, or a CPU runner capped below the core count. A CPU runner on every core loses
        # more to the worker preempting one of its threads (its others wait at the next
        # barrier) than the overlap saves: measured 0.91-0.95 of model-only throughput with the
        # worker, against ~0.98 inline, for OpenVINO INT8 on 2 cores.
        self.overlap = runner.device != "cpu" or 0 < runner.threads < usable_cores()

    @classmethod
    def load(cls, bundle: str | Path, backend: str | list[str] = "auto", threads: int = 0,
             tta: str = "none", timeout: float | None = None, fov_check: str | None = None) -> "Segmenter":
        """Read and verify ``bundle`` (manifest schema, every artifact's size and sha256), then
        load a runner: ``backend`` is ``"auto"`` (fastest measured here among the runners the
        export gate passed, cached), a name such as ``"openvino"``, ``"name:precision"`` such as
        ``"onnxruntime:int8"``, a list tried in order, or a KServe v2 model address
        ``"http://HOST:PORT/models/NAME"`` (the network runs there; the bundle still gives the
        spec, labels and post-processing). ``threads`` caps the backend's CPU threads (0: its
        default); ``tta`` mirrors at prediction (see the class); ``timeout`` is the seconds a remote
        backend waits for each answer of its server (default 60; a local backend takes none). ``fov_check``
        (default ``$EDGESEG_FOV_CHECK``, else warn): what ``predict_volume`` does with an input whose field of
        view lies outside the training data's: ``warn``, ``refuse`` or ``off``."""
        check_tta(tta)  # before any loading
        fov_mode = fov_check_mode(fov_check)
        manifest = read_manifest(bundle)  # first: it refuses a bundle that is no path
        folder = Path(bundle)
        if not (isinstance(backend, str) and is_remote(backend)):  # a remote model leaves the files unused
            verify_artifacts(folder, manifest)
        if manifest.inputs[0].dtype != "float32" or manifest.spec.dtype != "float32":
            raise BundleError(f"bundle {folder}: model input must be float32, manifest says "
                              f"{manifest.inputs[0].dtype} (spec {manifest.spec.dtype})")
        expected = (1, *manifest.spec.size)
        if tuple(manifest.inputs[0].shape[1:]) != expected:
            raise BundleError(f"bundle {folder}: input shape {list(manifest.inputs[0].shape)} does not match "
                              f"the spec size {list(manifest.spec.size)}")
        try:
            options = PostprocessOptions.from_dict(manifest.postprocess, max(manifest.labels, default=0) + 1)
        except DataError as exc:
            raise BundleError(f"bundle {folder}: {exc}") from None
        runner = select_runner(folder, manifest, backend, threads, timeout=timeout)
        described = runner.describe()
        log.info("loaded %s: backend %s:%s (%s), device %s", folder, described["backend"], described["precision"],
                 described["artifact"], described["device"])
        segmenter = cls(manifest.spec, manifest.labels, runner, options, manifest.max_batch,
                        resize_input=manifest.resize_input, bundle=folder, manifest=manifest, tta=tta)
        segmenter.fov_check = fov_mode
        return segmenter

    @classmethod
    def from_module(cls, module: Any, spec: PreprocessSpec, labels: dict[int, str], postprocess: dict[str, Any] | None = None,
                    max_batch: int = DEFAULT_BATCH, threads: int = 0, tta: str = "none") -> "Segmenter":
        """A Segmenter running an in-memory torch ``module`` (needs torch): how evaluation and
        the export gate run the trained model through the deployed pre- and post-processing."""
        from edgeseg.runtime.runners.torch_module import TorchModuleRunner

        inputs, outputs = network_tensors(spec, len(labels))
        return cls(spec, labels, TorchModuleRunner(module, inputs, outputs, max_batch, threads), postprocess, tta=tta,
                   regions=getattr(module, "regions", None) is not None)

    @property
    def backend(self) -> str:
        """``runner:precision`` of the loaded runner, e.g. ``openvino:int8``."""
        return f"{self.runner.name}:{self.runner.precision}"

    def algorithm_parameters(self) -> dict[str, str]:
        """Which model made the labels, for a DICOM SEG's Algorithm Parameters (its algorithm name
        and version are edgeseg's, alike for every bundle): the architecture, the checkpoint the
        bundle was exported from, the bundle's manifest (sha256), the artifact run (file, sha256)
        and the backend with its precision; for a remote runner, the artifact (sha256) and
        backend:precision its server says it ran."""
        found = {"backend": self.backend}
        if self.manifest is not None:
            found.update(model=self.manifest.model.get("name", ""), checkpoint_sha256=self.manifest.source.get("sha256", ""),
                         manifest_sha256=self.manifest.sha256)
            # a bundle file only: a remote runner's artifact is a URL, not the model's to publish
            entry = next((a for a in self.manifest.artifacts if a.file == self.runner.artifact), None)
            if entry is not None:
                found.update(artifact=entry.file, artifact_sha256=entry.sha256)
        served = getattr(self.runner, "served", {})  # what a remote runner's server says it ran
        if "artifact_sha256" in served:
            found.update(server_artifact_sha256=served["artifact_sha256"],
                         server_backend=":".join(filter(None, (served.get("backend"), served.get("precision")))))
        # the SEG writes them as name=value,name=value
        return {name: str(value).replace(",", "_").replace("=", "_") for name, value in found.items() if value}

    def infer(self, batch: np.ndarray) -> np.typing.NDArray[np.float32]:
        """Model only: (N, 1, H, W) float32 model input -> (N, K, H, W) float32 logits."""
        return self.runner.infer(batch)

    def logits(self, images: np.ndarray) -> np.typing.NDArray[np.float32]:
        """Pre-processed model input (N, 1, H, W) float32, any N -> (N, K, H, W) float32 logits,
        ``batch_size`` slices per runner call (the export gate compares these)."""
        self._check_process()
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[0] == 0:
            raise DataError(f"logits takes a non-empty (N, 1, H, W) batch, got shape {list(images.shape)}")
        with self._lock:
            return np.concatenate([self.runner.infer(np.ascontiguousarray(images[i:i + self.batch_size]))
                                   for i in range(0, len(images), self.batch_size)])

    def predict(self, slice_hu: np.ndarray) -> np.typing.NDArray[np.uint8]:
        """One (H, W) slice of HU -> (H, W) uint8 labels (class numbers of ``labels``)."""
        self._check_process()
        hu = checked_hu(slice_hu, self.spec, ndim=2, resize=self.resize_input, what="slice")
        with self._lock:
            logits = self._network(preprocess(hu, self.spec, out=self._input_buffer(0, 1), num_threads=KERNEL_THREADS))
        labels: np.typing.NDArray[np.uint8] = self._postprocess(logits, hu.shape)[0]
        return labels

    def predict_volume(self, volume: Volume | np.ndarray, *, batch_size: int | None = None, progress: bool = False,
                       spacing: tuple[float, float, float] | None = None, volume_filters: bool = True) -> np.typing.NDArray[np.uint8]:
        """A Volume (or a (Z, Y, X) HU array) -> (Z, Y, X) uint8 labels, slice by slice, then
        the bundle's 3-D component filters over the whole volume.

        Slices go to the model ``batch_size`` at a time (default: the bundle's maximum, at most
        8); where ``overlap`` is true, pre-processing of the next batch overlaps inference of
        the current one.
        ``progress`` shows a bar on stderr. ``spacing`` ((z, y, x) mm) overrides a Volume's;
        a class that removes 3-D components by mL needs one. ``volume_filters=False`` skips the
        3-D filters, for stacks that are not one volume (see :meth:`filter_volume`).
        """
        self._check_process()
        given = spacing
        if not isinstance(volume, np.ndarray):
            hu, modality = getattr(volume, "hu", None), getattr(volume, "modality", None)
            what = f"volume {getattr(volume, 'case_id', '')}".strip()
            if hu is None:
                raise DataError(f"predict_volume takes a Volume or a numpy array, got {type(volume).__name__}")
            spacing = getattr(volume, "spacing", None) if spacing is None else spacing
        else:
            hu, modality, what = volume, None, "volume"
        arr = checked_hu(hu, self.spec, ndim=3, resize=self.resize_input, modality=modality, what=what)
        mismatch = body_part_warning(getattr(volume, "body_part", ""), self.labels, what)
        if mismatch:
            log.warning("%s", mismatch)
        if given is not None:
            voxel_ml(given)  # a spacing passed in is checked as es_segment_volume_spaced checks it
        self.check_fov(arr.shape, given if given is not None else spacing if getattr(volume, "spacing_known", True)
                        else None, what)
        if volume_filters and self.postprocess.needs_spacing:
            self.postprocess.volume_rules(spacing)  # refuse a missing spacing before any work
        labels = self._segment_slices(arr, batch_size, progress)
        return self.filter_volume(labels, spacing) if volume_filters else labels

    def check_fov(self, shape: tuple[int, ...], spacing: tuple[float, float, float] | None, what: str) -> None:
        """One warning (an error with ``fov_check`` "refuse") where an input of known spacing has a field of view
        outside the bundle's training data's (``edgeseg.data.field_of_view``), once per wording; none where either is unknown."""
        record = None if self.manifest is None or self.fov_check == "off" else self.manifest.training_fov
        problem = fov_problem(record, shape, spacing, what)
        if problem and self.fov_check == "refuse":
            raise DataError(problem)
        if problem and problem not in self._fov_said:
            if len(self._fov_said) < 1024:
                self._fov_said.add(problem)
            log.warning("%s", problem)

    def filter_volume(self, labels: np.typing.NDArray[np.uint8],
                      spacing: tuple[float, float, float] | None = None) -> np.typing.NDArray[np.uint8]:
        """The bundle's 3-D component filters (per class, 6-connected) on (Z, Y, X) ``labels``
        of one volume; ``spacing`` (z, y, x) in mm, needed where a class removes components by
        mL. Returns ``labels`` itself when no class has a 3-D filter; other than uint8 (Z, Y, X): DataError."""
        if not self.postprocess.filters_volume:
            return checked_labels(labels, volume=True)
        rules = self.postprocess.volume_rules(spacing)
        return filter_components(labels, rules, volume=True, num_threads=KERNEL_THREADS)

    def _segment_slices(self, arr: np.ndarray, batch_size: int | None, progress: bool) -> np.ndarray:
        n = self._batch_size(batch_size)
        out = np.empty(arr.shape, dtype=np.uint8)
        starts = list(range(0, arr.shape[0], n))
        from concurrent.futures import wait

        with self._lock, progress_bar(total=arr.shape[0], desc="segmenting", unit="slice", shown=progress) as bar:
            if self._closed:  # before a new worker thread is started for a segmenter that is gone
                raise BackendError(f"segmenter of {self.bundle or self.runner.artifact} is closed; load the bundle again")
            def prepare(index: int) -> np.ndarray:
                start = starts[index]
                stop = min(start + n, arr.shape[0])
                return preprocess(arr[start:stop], self.spec, out=self._input_buffer(index % 2, stop - start),
                                  num_threads=KERNEL_THREADS)

            def finish(start: int, logits: np.ndarray) -> int:
                self._postprocess(logits, arr.shape, out=out[start:start + len(logits)])
                return len(logits)

            if not self.overlap:
                for index, start in enumerate(starts):
                    bar.update(finish(start, self._network(prepare(index))))
                return out
            worker = self._pool()

            # The worker runs, in order: pre-process i+1 (during inference of i), then
            # post-process i (during inference of i+1); the model thread never waits for either.
            pending = worker.submit(prepare, 0)
            finishing: list[Future[Any]] = []  # Any: waited on below together with `pending`
            try:
                for index, start in enumerate(starts):
                    batch = pending.result()
                    if index + 1 < len(starts):
                        pending = worker.submit(prepare, index + 1)
                    finishing.append(worker.submit(finish, start, self._network(batch)))
                    while finishing and finishing[0].done():
                        bar.update(finishing.pop(0).result())
                for future in finishing:
                    bar.update(future.result())
            finally:
                # After an error, let queued work finish before another call reuses the buffers.
                wait([pending, *finishing])
        return out

    def _network(self, batch: np.ndarray) -> np.ndarray:
        """The runner on a pre-processed batch, mirrored as ``tta`` says; a model of a fixed batch
        gets zero slices after a shorter one, whose logits are dropped."""
        n = len(batch)
        if 0 < n < self.fixed_batch:
            batch = np.concatenate([batch, np.zeros((self.fixed_batch - n, *batch.shape[1:]), batch.dtype)])
        return mirrored_logits(self.runner.infer, batch, self.tta, self.regions)[:n]

    def _postprocess(self, logits: np.ndarray, size: tuple[int, ...], out: np.ndarray | None = None) -> np.typing.NDArray[np.uint8]:
        """Labels at ``size`` (the spec's fit undone) and the per-slice component filters of every class."""
        out_size = (size[-2], size[-1])
        labels = postprocess(logits, out_size, resize=self.resize_mode, fit=self.spec.fit, out=out,
                             num_threads=KERNEL_THREADS)
        rules = self.postprocess.slice_rules(out_size, self.spec.size)
        if rules:
            labels[...] = filter_components(labels, rules, num_threads=KERNEL_THREADS)
        return labels

    @property
    def keep_largest(self) -> bool:
        """True when some class keeps only its largest component per slice."""
        return any(o.keep_largest for o in self.postprocess.classes.values())

    def _batch_size(self, batch_size: int | None) -> int:
        if batch_size is None:
            return self.batch_size
        # a model whose input fixes its batch takes exactly that many slices a call
        limit, what = (self.fixed_batch, "fixed batch") if self.fixed_batch else (self.max_batch, "max_batch")
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) \
                or not 1 <= batch_size <= limit:
            raise DataError(f"batch_size must be an integer in 1..{limit} (the model's {what}), got {batch_size!r}")
        return int(batch_size)

    def _input_buffer(self, which: int, rows: int) -> np.ndarray:
        """The first ``rows`` of reusable input buffer ``which`` (0 or 1), allocated once for the
        batch size in use, not for max_batch (up to 2^20 slices), and grown for a larger one."""
        if not self._buffers or len(self._buffers[0]) < rows:
            shape = (max(rows, self.batch_size), 1, *self.spec.size)
            self._buffers = [np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)]
        return self._buffers[which][:rows]

    def _pool(self) -> ThreadPoolExecutor:
        from concurrent.futures import ThreadPoolExecutor

        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeseg-preprocess")
        return self._worker

    def close(self) -> None:
        """Stop the pre-processing thread and release the runner, once a call in progress in
        another thread has finished; later calls raise BackendError. Closing twice does nothing.
        In a process forked after loading, it only marks the segmenter closed (see
        ``edgeseg.runtime.fork_guard``): the thread and the engine belong to the parent."""
        if fork_guard.forked_away(self._pid):
            self._closed = True
            self.runner.close()
            return
        with self._lock:
            self._closed = True
            if self._worker is not None:
                self._worker.shutdown(wait=True)
                self._worker = None
            self.runner.close()

    def _check_process(self) -> None:
        """BackendError, before any lock is taken, in a process forked after this segmenter was loaded:
        a lock another thread held at the fork stays held there for ever."""
        fork_guard.check_process(self._pid, f"the segmenter of {self.bundle or self.runner.artifact}")

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, str]:
        """Bundle, backend, precision and device, for logs and summaries."""
        described = {"bundle": "-" if self.bundle is None else str(self.bundle), **self.runner.describe()}
        return described if self.tta == "none" else {**described, "tta": self.tta}
