"""The DICOM node's work folder named with ``--work``: held by one node at a time, written durably,
and taken up again by the next node after one that died (SIGKILL, the OOM killer, a power cut).

A node answers C-STORE Success once the image is in its work folder. In a folder the node made
under TMPDIR that promise lasts only as long as the process: a node killed outright leaves its
folder behind under a random name, and the next start makes a new one. In a folder named with
``--work`` each image is written under a staged name, flushed to disk (``fsync``), renamed to
``SOP.dcm`` and the rename flushed (the folder's ``fsync``) before Success is answered; the
folder is claimed by an exclusive ``flock`` on its ``listen.lock`` for the node's whole life (the
kernel lets go of it when the process dies, however it dies), with the node's pid written in it
for the messages, and marked as a node's (``listen.work``): a folder holding anything else is
refused, never tidied. The next node that claims the folder finds what the dead one left
(:func:`recover`): the series being received, waiting or being segmented (``UID``,
``UID.taken-N``), merged back into one folder each (newest first, within the volume limit), to
be segmented once complete, and the series kept for late images (``UID.segmented``, with the SEGs
they were segmented into in ``.seg.json``: dicom_seg_notes.py), kept again for the rest of their time. A staged image
(a write the kill cut short: its Success was never sent) is removed, never read; a ``SOP.dcm``
that is not a whole image (a disk that lost what it was told it had written), or anything that is
not a regular file or folder itself (a link, a FIFO: never followed or opened), is moved to
``damaged/`` and logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.data.dicom_uids import uid_problem
from edgeseg.errors import DataError
from edgeseg.limits import VOLUME_BYTES_ENV, check_volume, current_limits
from edgeseg.serve.dicom_stored import whole_image
from edgeseg.staging import process_alive

log = logging.getLogger("edgeseg.listen")

LOCK_NAME = "listen.lock"
MARKER_NAME = "listen.work"  # made at the first claim: the folder is the node's, to take up and tidy
MARKER_TEXT = "The work folder of edgeseg listen (--work): the node moves and removes what it finds here.\n"
REFERENCE_NAME = ".seg.json"  # hidden: the series reader passes over it
DAMAGED = "damaged"
OVER_LIMIT = "over-limit"


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
        self.folder, self._fd = Path(folder), None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _check_ours(self.folder, option)
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
        marker = self.folder / MARKER_NAME
        if not marker.is_file() or marker.is_symlink():  # made once, whole or not at all (O_EXCL)
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except OSError as exc:
                self.release()
                raise DataError(f"{option} {folder} cannot be used as the work folder: {exc.strerror or exc}") from None
            try:
                os.write(fd, MARKER_TEXT.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            sync_folder(self.folder)

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(self._fd, 32, 0).decode().strip() or "x")
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _check_ours(folder: Path, option: str) -> None:
    """DataError, in one line, when ``folder`` holds anything but a node's claim and is not marked
    as a node's work folder (MARKER_NAME): the node moves and removes what it finds in its work
    folder, so a folder of someone else's files is never taken for one. Nothing is written in it."""
    names = {entry.name for entry in os.scandir(folder)}
    marker = folder / MARKER_NAME
    if MARKER_NAME in names and marker.is_file() and not marker.is_symlink():
        return
    others = sorted(names - {LOCK_NAME})
    if others:
        raise DataError(f"{option} {folder} is not empty and not an edgeseg listen work folder (no {MARKER_NAME}; it "
                        f"holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): name a new or empty "
                        "folder, the node moves and removes what it finds in its work folder")


def check_series(slices: int, shape: tuple[int, int], stored: int, series_uid: str) -> None:
    """DataError when a series of ``slices`` frames of ``shape`` whose files take ``stored`` bytes
    is past the readers' volume limit: its pixels as float32 HU, or its files on disk."""
    check_volume((slices, *shape), f"series {series_uid}")
    budget = current_limits().max_volume_bytes
    if stored > budget:
        raise DataError(f"series {series_uid}: its files would take {stored} bytes on disk, over the limit of {budget} "
                        f"(--max-volume-bytes or {VOLUME_BYTES_ENV})")


@dataclass
class Recovered:
    """A series found in the work folder at start: its folder (its images merged into one), what
    each image counts (``frames``, ``sizes``, by SOP Instance UID), the SEG it was segmented into
    before (``reference``: ``{"segs": [SegReference fields, one per volume], "until": the wall-clock
    time it is kept to}``, dicom_seg_notes.py),
    and whether it was being received or segmented (``in_flight``) or only kept for late images."""

    uid: str
    folder: Path
    in_flight: bool
    frames: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    shape: tuple[int, int] = (0, 0)
    reference: dict | None = None
    over_limit: int = 0  # images acknowledged before and set aside: with the rest, past the volume limit or mixed
    multiframe: set = field(default_factory=set)  # the SOP Instance UIDs of its multi-frame images


def regular_file(path: Path) -> bool:
    """``path`` is a regular file itself (not a link to one, a FIFO, a device, a folder)."""
    with contextlib.suppress(OSError):
        return stat.S_ISREG(path.lstat().st_mode)
    return False


def _part_of(name: str) -> tuple[str, int] | None:
    """(Series Instance UID, order) of a series folder's name: a taken one (by its number), the one
    being received (received last, its images win), a kept one (-1); None for another name."""
    uid, _, kind = name.partition(".taken-")
    order = int(kind) if kind.isdigit() else None
    if order is None:
        uid, order = (name[:-len(".segmented")], -1) if name.endswith(".segmented") else (name, 1 << 62)
    return (uid, order) if uid_problem(uid) is None else None


def _parts(work: Path) -> dict[str, list[tuple[int, Path]]]:
    """The series folders in ``work`` by Series Instance UID, each with its order (:func:`_part_of`).
    An entry so named that is not a folder itself (a link, a file) is moved aside, never followed."""
    parts: dict[str, list[tuple[int, Path]]] = {}
    for entry in sorted(work.iterdir()):
        part = _part_of(entry.name)
        if part is None:
            continue
        if entry.is_symlink() or not entry.is_dir():
            set_aside(work, "", entry, "is not a folder of series images the node made")
            continue
        parts.setdefault(part[0], []).append((part[1], entry))
    return parts


def set_aside(work: Path, uid: str, item: Path, why: str, folder: str = DAMAGED, say: bool = True) -> Path | None:
    """Move ``item`` (not followed where it is a link) to ``work/folder``, under a name no earlier
    one there has, with one line saying ``why`` (``say``) or where it cannot be moved; return its
    path there (None: left where it is)."""
    aside = work / folder
    if aside.is_symlink() or not aside.is_dir():
        if os.path.lexists(aside):
            log.error("%s %s; left where it is: %s is not a folder", item, why, aside)
            return None
        aside.mkdir()
    name, n = f"{uid}-{item.name}" if uid else item.name, 1
    while os.path.lexists(aside / name):
        n += 1
        name = f"{uid}-{n}-{item.name}" if uid else f"{n}-{item.name}"
    try:
        os.rename(item, aside / name)
    except OSError as exc:
        log.error("%s %s; it cannot be moved to %s (%s)", item, why, aside, exc.strerror or exc)
        return None
    if say:
        log.error("%s%s in the work folder %s; moved to %s, not segmented", f"series {uid}: " if uid else "",
                  item.name, why, aside / name)
    return aside / name


def recover(work: Path) -> tuple[list[Recovered], int]:
    """The series a dead node left in ``work``, each merged into ``work/UID`` (or kept as
    ``work/UID.segmented``), and how many staged images (writes cut short) were removed. Called
    holding the folder's claim: no other node writes in it. The parts of a series are merged newest
    first, as dicom_series.absorb does: an image in a newer one wins, and an older part whose images
    would take the series past the volume limit is moved to ``work/over-limit``."""
    from edgeseg.serve.dicom_seg_notes import newest, read_reference, save_reference  # it imports this module

    found, staged = [], 0
    for uid, parts in sorted(_parts(work).items()):
        parts.sort(key=lambda part: part[0], reverse=True)
        notes = {part: read_reference(part) for _, part in parts}  # read before the merge removes them
        reference = newest(notes.values())
        in_flight = any(order >= 0 for order, _ in parts)
        target = work / uid if in_flight else parts[0][1]
        if not in_flight and (reference is None or reference["until"] <= time.time()):
            shutil.rmtree(target, ignore_errors=True)  # its time to be kept is over
            continue
        if in_flight and not target.is_dir():
            target.mkdir()
        series = Recovered(uid, target, in_flight, reference=reference)
        for _, part in parts:
            aside_before = series.over_limit
            staged += _merge(work, uid, part, series)
            if series.over_limit > aside_before:  # its SEG is not of the images taken up: not replaced by theirs
                notes[part] = None
            if part != target:
                with contextlib.suppress(OSError):
                    os.rmdir(part)
        reference = series.reference = newest(notes.values()) if in_flight else reference
        if not series.frames:
            with contextlib.suppress(OSError):
                (target / REFERENCE_NAME).unlink(missing_ok=True)
                os.rmdir(target)
            if series.over_limit:  # none taken up: found only to be told of
                found.append(series)
            continue
        if reference is not None and in_flight:
            save_reference(target, reference["segs"], reference["until"])
        found.append(series)
    return found, staged


def _merge(work: Path, uid: str, part: Path, series: Recovered) -> int:
    """Add to ``series`` the whole images of ``part`` it does not hold (moved into its folder), all
    or, where they would take it past the volume limit or a newer part did, none; how many staged
    images were removed."""
    staged, images = 0, {}
    for item in sorted(part.iterdir()):
        if item.name.startswith(".") and regular_file(item):
            if part != series.folder or item.name != REFERENCE_NAME:
                staged += ".staging-" in item.name and item.name.endswith(".dcm")  # never acknowledged
                item.unlink(missing_ok=True)
            continue
        sop = item.name[:-4] if item.name.endswith(".dcm") else ""
        if not regular_file(item):
            set_aside(work, uid, item, "is not a regular file (a link, a FIFO, a folder), never read")
        elif sop in series.frames:  # the image came again later: the newer copy is held
            item.unlink()
        elif (whole := whole_image(item) if uid_problem(sop) is None else None) is None:
            set_aside(work, uid, item, "is not a whole image (cut short by the end of the node that received it)")
        else:
            images[sop] = item, *whole, item.stat().st_size
    slices = sum(series.frames.values()) + sum(frames for _, frames, _, _, _ in images.values())
    stored = sum(series.sizes.values()) + sum(size for *_, size in images.values())
    multi = sum(multiframe for _, _, _, multiframe, _ in images.values()) + len(series.multiframe)
    try:
        if images and series.over_limit:  # a newer part was set aside: an older one must not stand for it
            raise DataError(f"series {uid}: a newer part of it is past the volume limit")
        if images and multi and len(images) + len(series.frames) > 1:  # the reader would refuse the series
            raise DataError(f"series {uid}: with the rest of the series its images would mix a multi-frame file and "
                            f"other images; a series is read from one multi-frame file or from single-frame slices")
        if images:
            check_series(slices, next(iter(images.values()))[2], stored, uid)
    except DataError as exc:
        log.error("series %s: the %d image(s) in %s are not taken up with the rest of the series, moved to %s and not "
                  "segmented: %s", uid, len(images), part.name, work / OVER_LIMIT, exc)
        for item, *_ in images.values():
            set_aside(work, uid, item, "cannot be segmented with the rest of its series", OVER_LIMIT, say=False)
        series.over_limit += len(images)
        return staged
    for sop, (item, frames, shape, multiframe, size) in images.items():
        if part != series.folder:
            os.replace(item, series.folder / item.name)
        series.frames[sop], series.shape, series.sizes[sop] = frames, shape, size
        if multiframe:
            series.multiframe.add(sop)
    return staged
