"""``/v1/segment``: a whole file in, its mask out, with the format told by the file's own bytes.

An upload is read (``read_upload``), segmented, and its mask written (``write_mask``) as three
steps, so that the server holds the model only for the middle one: reading a large compressed
volume or writing its mask must not keep other requests from the model. ``ModelQueue`` is the
bounded wait for the model of the middle step.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, EdgesegError, require
from edgeseg.serve.batcher import QueueFull
from edgeseg.serve.waiting_line import WaitingLine, claim

OUTPUTS = {"npy": "application/octet-stream", "png": "image/png", "nifti": "application/gzip"}
SUFFIXES = {"jpeg": "jpg", "nifti": "nii.gz"}  # the upload's file name suffix where it is not the format's name
# An upload is segmented whole: what an Enhanced CT holding several volumes is told.
UPLOAD_PICK_HINT = "an upload is one volume: segment one with edgeseg predict --volume K"


def sniff(upload: Path) -> str:
    """The format of the upload in file ``upload`` from its magic bytes: dicom, nifti, png, jpeg or npy."""
    with open(upload, "rb") as file:
        head = file.read(348)
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(upload) as file:
                head = file.read(348)
        except (OSError, EOFError, zlib.error):
            raise DataError("upload is a gzip stream that cannot be decompressed") from None
    if len(head) >= 348 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    raise DataError("upload is not a DICOM file, NIfTI volume, PNG/JPG image or NPY array")


class ModelQueue:
    """Uploads in flight for the model, at most ``size`` of them beyond the one it runs: a place
    is taken (:meth:`reserve`; QueueFull beyond ``size``, as the micro-batcher's queue does)
    before an upload is read, so that no more than ``size`` decoded volumes wait at once, and
    given back when its model call starts, when it fails before, or the moment its caller gives
    up on it while it waits (then its call, and the volume it holds, are dropped unrun). One
    worker thread runs the calls in the order they came, each once it holds the model lock."""

    def __init__(self, lock: threading.Lock, size: int) -> None:
        self._lock = lock
        self.size = int(size)
        self._waiting = 0
        self._queued = 0
        self._count = threading.Lock()
        self._line: WaitingLine[_Upload] = WaitingLine()
        self._taken: _Upload | None = None  # taken from the line, waiting for the model lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeseg-upload", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Uploads being read or waiting for the model now."""
        return self._waiting

    @property
    def queued(self) -> int:
        """Uploads read and waiting for the model to start on them."""
        return self._queued

    def reserve(self) -> None:
        """Take a place in the queue; QueueFull when ``size`` uploads hold one or the queue is closed."""
        with self._count:
            if self._stop.is_set():  # nobody would run it: refused now, not at its timeout
                raise QueueFull("the upload worker has stopped")
            if self._waiting >= self.size:
                raise QueueFull(f"upload queue is full ({self.size} waiting)")
            self._waiting += 1

    def release(self) -> None:
        """Give back a place taken by :meth:`reserve` (the upload failed before its model call)."""
        with self._count:
            self._waiting -= 1

    def submit(self, call: Callable[[], object]) -> tuple[Future, Future]:
        """Run ``call()`` under the model lock for an upload that holds a place: (its result,
        a Future done when it starts, with True; False where the queue closed first). The place is given back when it starts, or when the
        caller cancels the result while it waits (then it never runs)."""
        upload = _Upload(_Place(call), Future(), Future())
        with self._count:
            self._queued += 1
        place = upload.place  # the callback holds the place alone: the upload would make a cycle
        upload.result.add_done_callback(lambda result: self._leave(place) if result.cancelled() else None)
        self._line.join(upload, upload.result)
        return upload.result, upload.started

    def _leave(self, place: "_Place") -> None:
        place.call = None  # its volume is not kept for a call that will never run
        self._give(place)

    def _give(self, place: "_Place") -> None:
        with self._count:
            if place.held:
                place.held = False
                self._waiting -= 1
                self._queued -= 1

    def _run(self) -> None:
        while not self._stop.is_set():
            upload = self._taken = self._line.take(timeout=0.1)
            if upload is None:
                continue
            with self._lock:
                self._taken = None
                self._give(upload.place)
                if not claim(upload.result):  # the caller gave up meanwhile, or the queue closed
                    continue
                upload.started.set_result(True)
                call, upload.place.call = upload.place.call, None
                try:
                    value = call()
                except BaseException as exc:  # the caller hears of every failure
                    upload.result.set_exception(exc)
                else:
                    upload.result.set_result(value)
            # the volume and its labels are the caller's alone from here: it frees them when answered
            upload = call = value = None

    def stop(self) -> None:
        """Ask the worker to stop after the call in flight, without waiting for it; uploads still
        waiting for the model are refused at once with QueueFull (their ``started`` done with
        False), not left to their callers' timeouts."""
        self._stop.set()
        for upload in [*self._line.drain(), self._taken]:
            if upload is not None and claim(upload.result):
                self._give(upload.place)
                upload.place.call = None
                upload.started.set_result(False)
                upload.result.set_exception(QueueFull("the upload worker stopped before the model started on the upload"))

    def close(self) -> None:
        """:meth:`stop`, then wait (up to 5 s) for the worker to end."""
        self.stop()
        self._thread.join(timeout=5)


class _Place:
    """An upload's call and its queue place (``held`` until given back)."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.call: Callable[[], object] | None = call
        self.held = True


@dataclass(frozen=True)
class _Upload:
    """An upload as it waits in line: its place, the Future of its result and the Future done
    when its call starts."""

    place: _Place
    result: Future
    started: Future


@contextlib.contextmanager
def _named_as_upload(tmp: Path):
    """An error names the upload (``upload.nii.gz: ...``), never the server's temporary folder."""
    try:
        yield
    except EdgesegError as exc:
        exc.args = (str(exc).replace(f"{tmp}/", "").replace(str(tmp), "the upload"),)
        raise


def read_upload(body: Path, fmt: str, tmp: Path, holding=None):
    """The Volume of the upload in file ``body``, read through ``tmp`` (the folder of ``body``,
    the upload's own), where ``body`` is moved; DataError for an output format not in OUTPUTS or
    an upload that is none of the formats read. ``holding`` (an
    ``edgeseg.serve.inflight.Holding``) is charged the volume's bytes as the reader sizes it
    from the header, before its pixels are allocated, and may refuse it."""
    from edgeseg.limits import volume_sizes_to

    with _named_as_upload(tmp), volume_sizes_to(holding.grow if holding is not None else lambda *_: None):
        volume = _read_upload(body, fmt, tmp)
    if holding is not None:  # a reader that sized nothing through the limits: charged now, once read
        holding.grow(volume.hu.nbytes)
    return volume


def _read_upload(body: Path, fmt: str, tmp: Path):
    from edgeseg.runtime.readers import read_input

    if fmt not in OUTPUTS:
        raise DataError(f"format must be one of {sorted(OUTPUTS)}, got {fmt!r}")
    if body.stat().st_size == 0:
        raise DataError("upload is empty")
    kind = sniff(body)
    if kind == "dicom":
        (tmp / "upload").mkdir()
        source = tmp / "upload" / "upload.dcm"
    else:
        source = tmp / f"upload.{SUFFIXES.get(kind, kind)}"
    if kind == "nifti" and _head(body, 2) != b"\x1f\x8b":
        source = tmp / "upload.nii"
    body.rename(source)  # the reader knows the format by the file's name
    volume, _ = read_input(source.parent if kind == "dicom" else source, pick_hint=UPLOAD_PICK_HINT)
    if fmt == "png" and volume.hu.shape[0] != 1:  # refused before the model is spent on it
        raise DataError(f"PNG output holds one slice; the upload has {volume.hu.shape[0]} (ask for npy or nifti)")
    return volume


def _head(path: Path, size: int) -> bytes:
    with open(path, "rb") as file:
        return file.read(size)


def write_mask(labels: np.ndarray, volume, fmt: str, tmp: Path, provenance: dict | None = None) -> tuple[Path, str]:
    """(the file in ``tmp`` holding the mask ``labels`` of ``volume`` in ``fmt``, its media type);
    a NIfTI or PNG mask holds ``provenance`` as ``edgeseg predict``'s outputs do."""
    with _named_as_upload(tmp):
        return _write_mask(labels, volume, fmt, tmp, provenance)


def _write_mask(labels: np.ndarray, volume, fmt: str, tmp: Path, provenance: dict | None) -> tuple[Path, str]:
    from edgeseg.runtime.writers import png_text, write_nifti, write_npy

    if fmt == "npy":
        out = write_npy(labels, tmp / "mask.npy")
    elif fmt == "png":
        # the label map itself (pixel = class number), not an overlay: clients compute with it
        Image = require("PIL.Image", "io", "PNG output")
        out = tmp / "mask.png"
        Image.fromarray(np.ascontiguousarray(labels[0])).save(out, format="PNG", pnginfo=png_text(provenance))
    else:
        out = write_nifti(labels, volume, tmp / "mask.nii.gz", provenance=provenance)
    return Path(out), OUTPUTS[fmt]


def labels_from_npy(payload: bytes) -> np.ndarray:
    """Decode an NPY response (for clients and tests)."""
    return np.load(io.BytesIO(payload), allow_pickle=False)
