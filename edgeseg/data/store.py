"""The slice store: a data source pre-processed once into arrays on disk, read slice by slice.

Training reads slices from here instead of holding every volume in memory. For each case the
store holds ``<n>.images.npy`` ((Z, 1, h, w) float32 model input, from the C kernels) and
``<n>.labels.npy`` ((Z, h, w) uint8 class indices), plus ``index.npz`` (case and slice of every
slice, and which classes each slice contains) and ``manifest.json``. Slices are read by
position (``os.preadv`` into the batch's own array), not through memory maps: every page a
process touches through a map stays in its resident set, so one epoch over a memory-mapped
store would grow each reader's RSS by the size of the store. Read this way the pages stay in
the kernel's shared page cache, which every process and later runs share.

A store lives in ``CACHE/store-<key>``, the key hashing the source string, the PreprocessSpec,
the label mapping and the slice-folder intensity, so each spec of a source has its own store.
The manifest records the store format, the edgeseg version and the identity of every source
file (path, size, mtime_ns); a store whose record differs from the source today is rebuilt,
with a log line saying why. Building reads one case group at a time (see
:mod:`edgeseg.data.store_sources`), writes into a staging folder that is renamed into place
whole (:func:`edgeseg.atomic.atomic_dir`), and holds an exclusive lock on ``store-<key>.lock``
so two processes never build the same store at once: the second waits, then finds the first's
store and uses it. A killed build leaves only a staging folder, which no reader trusts and the
next build removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import NamedTuple
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_dir, atomic_write_text, check_output_folder
from edgeseg.data.store_sources import CaseGroup, case_groups
from edgeseg.errors import DataError
from edgeseg.progress import progress_bar
from edgeseg.spec import PreprocessSpec

log = logging.getLogger("edgeseg.data.store")

# 2: per-case geometry, slice-folder options, labels through the spec's fit; 3: the readers'
# rules changed (z spacing of a gantry-tilted series, masks with several grey levels above 127,
# alpha or fractional masks, the label grid tolerance), so a format-2 store of the same source
# may hold data they now read otherwise or refuse; 4: each case's content hash (case_sha256), which
# a run records as the data it trained on.
STORE_FORMAT = 4


def store_key(source: str, spec: PreprocessSpec, labels: dict[str, list[int]], intensity: str | None,
              slice_options: dict | None = None) -> str:
    """The folder key of a source's store for one spec, label mapping, intensity and slice-folder
    options (case pattern, mask kind)."""
    text = json.dumps({"source": source, "spec": spec.to_dict(), "labels": labels, "intensity": intensity,
                       **({"slice_options": slice_options} if slice_options else {})}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version() -> str:
    from edgeseg import __version__

    return __version__


def _record(groups: list[CaseGroup], spec: PreprocessSpec, labels: dict, intensity: str | None,
            slice_options: dict | None = None) -> dict:
    """What a store must have been built from to be trusted today, as its manifest reads back."""
    return json.loads(json.dumps({
        "format": STORE_FORMAT,
        "edgeseg": _version(),
        "spec_hash": spec.hash,
        "labels": labels,
        "intensity": intensity,
        "slice_options": slice_options or {},
        "sources": [[g.name, list(g.identity)] for g in groups],
    }))


def _stale_reason(manifest: dict, record: dict) -> str | None:
    """Why a store's manifest does not match ``record`` (None: it matches)."""
    if manifest.get("format") != record["format"] or manifest.get("edgeseg") != record["edgeseg"]:
        return (f"it was built by store format {manifest.get('format')} of edgeseg {manifest.get('edgeseg')}, "
                f"this is format {record['format']} of edgeseg {record['edgeseg']}")
    if manifest.get("spec_hash") != record["spec_hash"]:
        return "its PreprocessSpec differs"
    if manifest.get("labels") != record["labels"] or manifest.get("intensity") != record["intensity"]:
        return "its label mapping or intensity differs"
    if manifest.get("slice_options", {}) != record["slice_options"]:
        return "its slice-folder options (case pattern, mask kind) differ"
    if manifest.get("sources") != record["sources"]:
        return "source files changed (path, size or modification time)"
    return None


class CaseGeometry(NamedTuple):
    """Where a stored case came from: its voxel spacing (mm), its (Z, Y, X) shape and whether its
    slices form a volume (False for a slice folder's unrelated 2-D images)."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    contiguous: bool


class SliceStore:
    """A built store, opened read-only; slices are read by position on demand (see the module docstring).

    Attributes:
        path: the store folder.
        case_ids: the cases, in source order.
        case_index: (N,) int32 case of every slice (index into ``case_ids``).
        slice_index: (N,) int32 slice number of every slice within its case.
        present: (N, C) bool, whether class c occurs in the slice (class 0 is background).
        built: True when this call built the store, False when it reused one.
        build_seconds: how long this call took to build it (None when it reused one).
        rebuilt_because: why a store already there was not reused (None or "" when there was none).
    """

    def __init__(self, path: Path, built: bool = False, build_seconds: float | None = None,
                 rebuilt_because: str | None = None) -> None:
        self.path = Path(path)
        self.built, self.build_seconds, self.rebuilt_because = built, build_seconds, rebuilt_because
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        index = np.load(self.path / "index.npz")
        self.case_index = index["case_index"]
        self.slice_index = index["slice_index"]
        self.present = index["present"]
        self.case_ids: list[str] = list(self.manifest["case_ids"])
        self.num_classes = int(self.present.shape[1])
        self._layout: dict[Path, tuple[int, tuple[int, ...]]] = {}

    def __len__(self) -> int:
        return int(self.case_index.shape[0])

    def describe(self) -> str:
        """'built slice store PATH in S s' or 'using slice store PATH (...)': for the log, once the
        caller has checked what it reads from the store (a refusal is then the only line)."""
        if self.built:
            # why an earlier store was not reused is said here, not when the build starts, so that
            # data the run then refuses gets its one line alone
            why = f" (rebuilt: {self.rebuilt_because})" if self.rebuilt_because else ""
            return f"built slice store {self.path} in {self.build_seconds or 0.0:.1f} s{why}"
        return f"using slice store {self.path} (built before for this source and spec)"

    def _array_layout(self, path: Path, dtype: np.dtype) -> tuple[int, tuple[int, ...]]:
        """Byte offset of the data and shape of a store ``.npy`` file (written by this module:
        C order, ``dtype``), read from its header once per process."""
        if path not in self._layout:
            with open(path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, stored = read_header(handle)
                if fortran or stored != dtype:
                    raise DataError(f"slice store file {path} is not a C-order {dtype} array; delete the store to rebuild it")
                self._layout[path] = (handle.tell(), tuple(shape))
        return self._layout[path]

    def _read_slices(self, path: Path, slices: np.ndarray, targets: list[np.ndarray]) -> None:
        """Read slice ``slices[k]`` (first-axis position) of the store file ``path`` into the
        C-contiguous array ``targets[k]``, for every k."""
        offset, shape = self._array_layout(path, targets[0].dtype)
        fd = os.open(path, os.O_RDONLY)
        try:
            for z, target in zip(slices, targets):
                if not 0 <= z < shape[0]:
                    raise DataError(f"slice {z} is outside {path} ({shape[0]} slices)")
                view, at = memoryview(target).cast("B"), offset + int(z) * target.nbytes
                while len(view):
                    n = os.preadv(fd, [view], at)
                    if n == 0:
                        raise DataError(f"slice store file {path} is truncated; delete the store to rebuild it")
                    view, at = view[n:], at + n
        finally:
            os.close(fd)

    def case_labels(self, case: int) -> np.ndarray:
        """(Z, h, w) uint8 class indices of case number ``case``, read whole."""
        path = self.path / f"{case}.labels.npy"
        _, shape = self._array_layout(path, np.dtype(np.uint8))
        labels = np.empty(shape, np.uint8)
        self._read_slices(path, np.arange(shape[0]), [labels])
        return labels

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (B, 1, h, w) float32 and labels (B, h, w) uint8 of global slice numbers ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        h, w = self.manifest["size"]
        images = np.empty((len(rows), 1, h, w), np.float32)
        labels = np.empty((len(rows), h, w), np.uint8)
        cases = self.case_index[rows]
        for case in np.unique(cases):
            at = np.flatnonzero(cases == case)
            slices = self.slice_index[rows[at]]
            self._read_slices(self.path / f"{case}.images.npy", slices, [images[k] for k in at])
            self._read_slices(self.path / f"{case}.labels.npy", slices, [labels[k] for k in at])
        return images, labels

    def geometry(self, case_id: str) -> CaseGeometry:
        """Voxel spacing, shape and contiguity of a case's source volume (before pre-processing)."""
        g = self.manifest["geometry"][self.case_ids.index(case_id)]
        return CaseGeometry(tuple(g["spacing"]), tuple(g["shape"]), bool(g["contiguous"]))

    def case_hashes(self, case_ids: list[str] | None = None) -> dict[str, str]:
        """Case id -> :meth:`~edgeseg.data.volume.Volume.content_sha256` of the source case, for
        ``case_ids`` (default: every case of the store)."""
        hashes = dict(zip(self.case_ids, self.manifest["case_sha256"]))
        return {case_id: hashes[case_id] for case_id in (self.case_ids if case_ids is None else case_ids)}

    def rows_of(self, case_ids: list[str]) -> np.ndarray:
        """Global slice numbers of ``case_ids``, case by case in the order given."""
        number = {c: i for i, c in enumerate(self.case_ids)}
        missing = [c for c in case_ids if c not in number]
        if missing:
            raise DataError(f"cases {', '.join(missing)} are not in the slice store {self.path}")
        return np.concatenate([np.flatnonzero(self.case_index == number[c]) for c in case_ids]
                              or [np.zeros(0, np.int64)])


@contextlib.contextmanager
def _build_lock(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        started = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s", lock_path.with_suffix(""))
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("waited %.0f s for the slice store", time.monotonic() - started)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _untrusted_because(target: Path, record: dict) -> str | None:
    """None when ``target`` holds a complete store matching ``record``; else why not ("" where
    there is no store yet)."""
    manifest_path = target / "manifest.json"
    if not manifest_path.is_file():
        return ""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return "its manifest is unreadable"
    return _stale_reason(manifest, record)


def open_slice_store(source: str, cache: str | os.PathLike, spec: PreprocessSpec,
                     labels: dict[str, list[int]], intensity: str | None = None,
                     progress: bool = False, slice_options: dict | None = None) -> SliceStore:
    """Open the store of ``source`` for ``spec`` under ``cache``, building it first when needed.

    ``labels`` maps class names to source label values as in :class:`~edgeseg.train.config.TrainConfig`.
    An unwritable ``cache`` is refused before any data is read; a store that no longer matches
    its source, spec or edgeseg version is rebuilt (see the module docstring). ``slice_options``
    (``case_pattern``, ``mask``, ``label_values``) are passed to ``open_dataset`` for slice folders.
    Whether it was built or reused is the caller's to log (:meth:`SliceStore.describe`).
    """
    slice_options = {k: v for k, v in (slice_options or {}).items() if v is not None}
    groups = case_groups(source, intensity, slice_options)
    record = _record(groups, spec, labels, intensity, slice_options)
    target = Path(cache) / f"store-{store_key(source, spec, labels, intensity, slice_options)}"
    why = _untrusted_because(target, record)
    if why is None:
        # Reading a built store writes nothing, so a read-only shared cache serves it.
        return SliceStore(target)
    cache = check_output_folder(cache, "slice store cache (--cache)")
    created = [folder for folder in (cache, *cache.parents) if not folder.exists()]
    cache.mkdir(parents=True, exist_ok=True)
    lock = target.with_suffix(".lock")
    try:
        with _build_lock(lock):
            if _untrusted_because(target, record) is None:  # built by another process while this one waited
                return SliceStore(target)
            started = time.monotonic()
            with atomic_dir(target) as staging:
                _build(staging, groups, spec, labels, record, progress)
            seconds = time.monotonic() - started
    except BaseException:
        _undo_folders(lock, created)
        raise
    return SliceStore(target, built=True, build_seconds=seconds, rebuilt_because=why)


def _undo_folders(lock: Path, created: list[Path]) -> None:
    """After a failed build (bad data, an interrupt), leave nothing a run would not have left:
    the lock file and the folders this call created, where nothing else has appeared in them."""
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    for folder in created:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _build(folder: Path, groups: list[CaseGroup], spec: PreprocessSpec, labels: dict,
           record: dict, progress: bool) -> None:
    """Pre-process every group into ``folder``, one group in memory at a time; manifest last."""
    from edgeseg.data.slice_set import check_window, preprocess_stack, volume_classes
    from edgeseg.kernels.reference import preprocess_labels

    num_classes = len(labels) + 1
    case_ids: list[str] = []
    case_index, slice_index, present, geometry, case_sha256 = [], [], [], [], []
    for group in progress_bar(groups, desc="building slice store", unit="group", shown=progress):
        for volume in group.read():
            if volume.label is None:
                raise DataError(f"case {volume.case_id} ({volume.source}) has no label map; training needs one")
            if volume.case_id in case_ids:
                raise DataError(f"case id {volume.case_id!r} appears twice in the source; splits need one volume per case id")
            check_window(volume, spec)
            number = len(case_ids)
            images = preprocess_stack(volume.hu, spec)
            classes = preprocess_labels(volume_classes(volume, labels), spec)
            np.save(folder / f"{number}.images.npy", images)
            np.save(folder / f"{number}.labels.npy", classes)
            case_ids.append(volume.case_id)
            case_sha256.append(volume.content_sha256())
            geometry.append({"spacing": [float(v) for v in volume.spacing], "shape": list(volume.hu.shape),
                             "contiguous": bool(getattr(volume, "contiguous", True))})
            case_index.append(np.full(len(classes), number, np.int32))
            slice_index.append(np.arange(len(classes), dtype=np.int32))
            present.append(np.stack([(classes == c).any(axis=(1, 2)) for c in range(num_classes)], axis=1))
            del volume, images, classes
    if not case_ids:
        raise DataError("no cases to build a slice store from")
    np.savez(folder / "index.npz", case_index=np.concatenate(case_index),
             slice_index=np.concatenate(slice_index), present=np.concatenate(present))
    manifest = {**record, "case_ids": case_ids, "case_sha256": case_sha256, "geometry": geometry,
                "size": list(spec.size), "num_classes": num_classes}
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=1))


class _StoreRows:
    """Rows of a store read on demand: ``len()`` and slicing / integer-array indexing, which is
    all validation needs, so validation images stream from disk batch by batch."""

    def __init__(self, store: SliceStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows
        self.shape = (len(rows), 1, *store.manifest["size"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item) -> np.ndarray:
        return self.store.take(self.rows[item])[0]


class StoreCases:
    """The slices of some cases of a store, shaped like :class:`~edgeseg.data.slice_set.SliceSet`.

    ``images`` are read from the store on demand and ``case_labels(k)`` one case at a time, so
    validation holds one case whatever the number of cases; ``labels`` (all of them, uint8) are
    read whole on first use. ``rows`` are the global slice numbers, for the training sampler.
    """

    def __init__(self, store: SliceStore, case_ids: list[str]) -> None:
        self.store, self.case_ids = store, list(case_ids)
        self.rows = store.rows_of(self.case_ids)
        self.images = _StoreRows(store, self.rows)
        self.case_index = np.repeat(np.arange(len(self.case_ids), dtype=np.int32),
                                    [int(np.sum(store.case_index == store.case_ids.index(c))) for c in self.case_ids])

    def __len__(self) -> int:
        return len(self.rows)

    def case_labels(self, k: int) -> np.ndarray:
        """(Z, h, w) uint8 class indices of this set's case number ``k``, read from the store."""
        return self.store.case_labels(self.store.case_ids.index(self.case_ids[k]))

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """(N, h, w) uint8 class indices, read on first use (training never needs them whole)."""
        return np.concatenate([self.store.case_labels(self.store.case_ids.index(c)) for c in self.case_ids])
