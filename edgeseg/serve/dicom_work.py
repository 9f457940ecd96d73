"""The DICOM node's work folder named with ``--work``: held by one node at a time, written durably,
and taken up again by the next node after one that died (SIGKILL, the OOM killer, a power cut).

A node answers C-STORE Success once the image is in its work folder. In a folder the node made
under TMPDIR that promise lasts only as long as the process: a node killed outright leaves its
folder behind under a random name, and the next start makes a new one. In a folder named with
``--work`` each image is written under a staged name, flushed to disk (``fsync``), renamed to
``SOP.dcm`` and the rename flushed (the folder's ``fsync``) before Success is answered; the
folder is claimed by an exclusive ``flock`` on its ``listen.lock`` for the node's whole life (the
kernel lets go of it when the process dies, however it dies), with the node's pid written in it
for the messages. The next node that claims the folder finds what the dead one left
(:func:`recover`): the series being received, waiting or being segmented (``UID``,
``UID.taken-N``), merged back into one folder each, to be segmented once complete, and the
series kept for late images (``UID.segmented``, with the SEG they were segmented into in
``.seg.json``), kept again for the rest of their time. A staged image (a write the kill cut
short: its Success was never sent) is removed, never read; a ``SOP.dcm`` that is not a whole
image (a disk that lost what it was told it had written) is moved to ``damaged/`` and logged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeseg.errors import DataError
from edgeseg.serve.dicom_intake import UID_PATTERN
from edgeseg.staging import process_alive

log = logging.getLogger("edgeseg.listen")

LOCK_NAME = "listen.lock"
REFERENCE_NAME = ".seg.json"  # hidden: the series reader passes over it
DAMAGED = "damaged"


def sync_file(path: Path) -> None:
    """Flush the file ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_folder(path: Path) -> None:
    """Flush the entries of the folder ``path`` (a file renamed or made in it) to disk. Passed over
    only where the OS cannot open a folder (no ``O_DIRECTORY``) or its file system does not sync
    folders (EINVAL, ENOTSUP); any other failure (EIO, ENOSPC, the folder gone) is raised: the
    rename is then not known to be on disk, and the image it stores must not be acknowledged."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


_NO_FOLDER_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


class WorkClaim:
    """The ``flock`` that makes ``folder`` one node's work folder; DataError, in one line, when a
    live node holds it. ``previous``: the pid written by the node that held it before, if any.
    ``note=False`` checks the folder without writing this pid in it (``listen``, before the model loads)."""

    def __init__(self, folder: str | os.PathLike, option: str = "--work", note: bool = True) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DataError(f"{option} {folder} cannot be used as the work folder: {exc.strerror or exc}") from None
        self.previous = self._pid()
        try:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EWOULDBLOCK, or EACCES where locks are byte ranges
            self.release()
            raise DataError(f"{option} {folder} is the work folder of a running edgeseg listen (pid "
                            f"{self.previous or '?'}); two nodes cannot share one work folder") from None
        except (ImportError, OSError):  # no locks here: the pid alone tells
            if self.previous not in (None, os.getpid()) and process_alive(self.previous):
                self.release()
                raise DataError(f"{option} {folder} is the work folder of a running edgeseg listen (pid "
                                f"{self.previous}); two nodes cannot share one work folder") from None
        if not note:
            return
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(self._fd)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(self._fd, 32, 0).decode().strip() or "x")
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Recovered:
    """A series found in the work folder at start: its folder (its images merged into one), what
    each image counts (``frames``, ``sizes``, by SOP Instance UID), the SEG it was segmented into
    before (``reference``: SegReference fields, with ``until``, the wall-clock time it is kept to),
    and whether it was being received or segmented (``in_flight``) or only kept for late images."""

    uid: str
    folder: Path
    in_flight: bool
    frames: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    shape: tuple[int, int] = (0, 0)
    reference: dict | None = None


def save_reference(folder: Path, reference, until: float) -> None:
    """Write beside a series' images the SEG they were segmented into (a SegReference, or its
    fields) and the wall-clock time they are kept to, so that a node taking the folder up again
    can replace that SEG."""
    from edgeseg.atomic import atomic_path

    fields = dict(reference) if isinstance(reference, dict) else asdict(reference)
    with atomic_path(folder / REFERENCE_NAME) as tmp:
        tmp.write_text(json.dumps({**fields, "until": until}))


def _reference(folder: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads((folder / REFERENCE_NAME).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("until"), (int, float)) else None
    return None


def _parts(work: Path) -> dict[str, list[tuple[int, Path]]]:
    """The series folders in ``work`` by Series Instance UID, each with its order: a taken one (by
    its number), then the one being received (received last, its images win), then a kept one."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    for entry in sorted(work.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        uid, _, kind = entry.name.partition(".taken-")
        order = int(kind) if kind.isdigit() else None
        if order is None:
            uid, order = (entry.name[:-len(".segmented")], -1) if entry.name.endswith(".segmented") else (entry.name, 1 << 62)
        if UID_PATTERN.fullmatch(uid) and len(uid) <= 64:
            parts.setdefault(uid, []).append((order, entry))
    return parts


def _whole(path: Path) -> tuple[int, tuple[int, int]] | None:
    """(frames, (rows, columns)) of an image file holding all its pixel data, else None. The pixel
    data is not read: its element must claim the bytes its size needs (the node stores images
    uncompressed) and the file must hold them all."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=4096)
        frames, rows, columns = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
        pixels = ds.get_item("PixelData", keep_deferred=True)
        need = frames * rows * columns * ((int(ds.BitsAllocated) + 7) // 8)
        if pixels is None or pixels.length < need:
            return None
        tell = getattr(pixels, "value_tell", None)  # none where the value was read (under defer_size)
        if len(pixels.value) < need if tell is None else tell + pixels.length > path.stat().st_size:
            return None
        return frames, (rows, columns)
    except Exception:  # truncated, not DICOM, no pixel data: not a whole image
        return None


def recover(work: Path) -> tuple[list[Recovered], int]:
    """The series a dead node left in ``work``, each merged into ``work/UID`` (or kept as
    ``work/UID.segmented``), and how many staged images (writes cut short) were removed. Called
    holding the folder's claim: no other node writes in it."""
    found, staged = [], 0
    for uid, parts in sorted(_parts(work).items()):
        parts.sort(key=lambda part: part[0])
        reference = max((r for r in (_reference(p) for _, p in parts) if r is not None),
                        key=lambda r: r.get("instance_number", 0), default=None)
        in_flight = any(order >= 0 for order, _ in parts)
        target = work / uid if in_flight else parts[0][1]
        if in_flight and not target.is_dir():
            target.mkdir()
        series = Recovered(uid, target, in_flight, reference=reference)
        for _, part in parts:
            for item in sorted(part.iterdir()):
                if item.name.startswith(".") and (part != target or item.name != REFERENCE_NAME):
                    staged += ".staging-" in item.name and item.name.endswith(".dcm")  # never acknowledged
                    item.unlink(missing_ok=True)
                elif part != target and item.is_file():
                    os.replace(item, target / item.name)
            if part != target:
                with contextlib.suppress(OSError):
                    os.rmdir(part)
        if not in_flight and (reference is None or reference["until"] <= time.time()):
            shutil.rmtree(target, ignore_errors=True)  # its time to be kept is over
            continue
        for item in sorted(target.iterdir()):
            if item.name.startswith("."):
                continue
            sop = item.name[:-4] if item.name.endswith(".dcm") else ""
            whole = _whole(item) if UID_PATTERN.fullmatch(sop) else None
            if whole is None:
                (work / DAMAGED).mkdir(exist_ok=True)
                os.replace(item, work / DAMAGED / f"{uid}-{item.name}")
                log.error("series %s: %s in the work folder is not a whole image (cut short by the end of the node "
                          "that received it); moved to %s, not segmented", uid, item.name, work / DAMAGED)
                continue
            series.frames[sop], series.shape = whole
            series.sizes[sop] = item.stat().st_size
        if not series.frames:
            with contextlib.suppress(OSError):
                os.rmdir(target)
            continue
        if reference is not None and in_flight:
            save_reference(target, {k: v for k, v in reference.items() if k != "until"}, reference["until"])
        found.append(series)
    return found, staged
