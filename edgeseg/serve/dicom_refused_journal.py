"""The DICOM node's refusal notes (dicom_refused.RefusedImages) on disk in its ``--work`` folder, so
that a node killed outright (SIGKILL, the OOM killer, a power cut) and started again on the folder
still fails a series it takes up for an image refused before, and still holds a series that failed
so to a whole re-send.

The notes are kept as ``listen.refused``, one JSON line per change (a note made, a series
forgotten, an image taken, a failure remembered or dropped), each written and flushed to disk
(``fsync``) before the node answers the image it is about. A start reads the lines in order into
the notes, passing over a line cut short by the kill or otherwise unreadable (with one warning),
and rewrites the file from the notes read. The file is rewritten the same way, whole, under a
staged name, flushed and renamed, with the folder flushed, whenever the bytes written since
outnumber those it was last rewritten with (and 1 MiB): it stays within twice the notes' own
size and 1 MiB, which their bounds bound. With no notes there is no file; the write that creates
it flushes the folder too. A file past what a start reads (not one the node wrote) is read from
its end: the newest notes are kept, the oldest passed over with a warning. Once closed (the node
stopped) nothing more is written. Times are written as wall-clock
times, so the notes expire across a restart as they do in a node that runs on."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeseg.serve.dicom_work import sync_folder

log = logging.getLogger("edgeseg.listen")

NOTES_NAME = "listen.refused"
REASON_BYTES = 500  # a reason is a message; cut to this many bytes as written (escaped), it still says why
# The most bytes of a note's line: its reason, two UIDs of 64 characters (DICOM's most), its time and the rest.
NOTE_BYTES = 1024
GROWTH_FLOOR = 1 << 20  # bytes written since the last rewrite before the file is rewritten, at the least


def _finite(value) -> bool:
    """``value`` (a time read back) is a finite number: not NaN, not infinite, not an integer too
    large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _event_ok(event) -> bool:
    """``event`` is one of the changes :class:`RefusalJournal` writes, with fields of their types."""
    if not isinstance(event, list) or not event:
        return False
    kind, args = event[0], event[1:]
    optional_str = (str, type(None))
    shapes = {"note": (str, optional_str, str, (int, float)), "forget": (str,), "take": (str, str),
              "fail": (str, list, (int, float)), "unfail": (str,)}
    shape = shapes.get(kind)
    if shape is None or len(args) != len(shape):
        return False
    if not all(isinstance(v, t) and not isinstance(v, bool) for v, t in zip(args, shape)):
        return False
    if kind in ("note", "fail") and not _finite(args[-1]):
        return False
    return kind != "fail" or all(isinstance(sop, str) for sop in args[1])


class RefusalJournal:
    """The file ``work/listen.refused``: :meth:`write` appends a change, :meth:`read` yields those
    written (times back on the monotonic clock), :meth:`rewrite` replaces them with a whole set.
    A change that cannot be written (the disk full, failing) is logged, and kept in memory only."""

    def __init__(self, work: str | os.PathLike) -> None:
        self.path = Path(work) / NOTES_NAME
        self._fd: int | None = None
        self._closed = False  # close(): the node stopped, nothing more is written
        self.size = 0  # the bytes in the file now
        self.rewritten = 0  # the bytes it was last rewritten with

    def read(self, most_bytes: int) -> Iterator[list]:
        """The changes in the file, in order, times on the monotonic clock; at most ``most_bytes``
        of it are read (past them, or past a line that cannot be read, one warning)."""
        if not self.path.is_file() or self.path.is_symlink():
            return
        shift = time.monotonic() - time.time()
        bad = 0
        try:
            notes = open(self.path, "rb")
        except OSError as exc:
            log.warning("cannot read the refusal notes in %s (%s); the node starts without them", self.path,
                        exc.strerror or exc)
            return
        with notes:
            size = os.fstat(notes.fileno()).st_size
            if size > most_bytes:  # the newest notes are read, the oldest passed over
                notes.seek(size - most_bytes - 1)
                if notes.read(1) != b"\n":
                    notes.readline()  # the rest of a line begun before
                log.warning("%s is past %d bytes; only the refusal notes in its last %d bytes are read, the older "
                            "ones passed over", self.path, most_bytes, most_bytes)
            for line in notes:
                event = None
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                if not line.endswith(b"\n") or not _event_ok(event):  # cut short by a kill, or not a note
                    bad += 1
                    continue
                if event[0] in ("note", "fail"):
                    event[-1] = float(event[-1]) + shift
                yield event
        if bad:
            log.warning("%s: %d line(s) are not refusal notes (one cut short by the end of the node that wrote it?); "
                        "passed over", self.path, bad)

    def write(self, *event) -> None:
        """Append the change ``event`` (a time last, on the monotonic clock, for a note or a failure)
        and flush it to disk, with the folder where this made the file."""
        if self._closed:
            return
        try:
            created = False
            if self._fd is None:
                try:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                    created = True
                except FileExistsError:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            line = _line(event)
            os.write(self._fd, line)
            os.fsync(self._fd)
            if created:  # its name is on disk too: a kill now does not lose the file
                sync_folder(self.path.parent)
            self.size += len(line)
        except OSError as exc:
            self._release()
            log.error("cannot note a refusal in %s (%s); a node started again on the folder does not know of it",
                      self.path, exc.strerror or exc)

    def rewrite(self, events: Iterable[tuple]) -> None:
        """Replace the file with ``events``, whole or not at all (none: the file is removed)."""
        from edgeseg.atomic import atomic_path

        if self._closed:
            return
        self._release()
        events, count = list(events), 0
        try:
            if not events:
                if os.path.lexists(self.path):
                    self.path.unlink()
                    sync_folder(self.path.parent)
                self.size = self.rewritten = 0
                return
            with atomic_path(self.path) as staged:
                with open(staged, "wb") as notes:
                    for event in events:
                        line = _line(event)
                        notes.write(line)
                        count += len(line)
                    notes.flush()
                    os.fsync(notes.fileno())
            sync_folder(self.path.parent)
        except OSError as exc:
            log.error("cannot rewrite the refusal notes in %s (%s); the notes written before stand", self.path,
                      exc.strerror or exc)
            return
        self.size = self.rewritten = count

    def grown(self) -> bool:
        """More bytes were written since the last rewrite than it wrote (and GROWTH_FLOOR): time to
        write the notes anew, so that the file stays within twice their own size."""
        return self.size - self.rewritten > max(GROWTH_FLOOR, self.rewritten)

    def close(self) -> None:
        """Let go of the file for good (the node stopped): a late change is kept in memory only."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _cut(reason: str) -> str:
    """``reason`` cut to what JSON writes in REASON_BYTES bytes: a character beyond ASCII is
    written escaped, in 6 or 12 bytes, so a count of characters does not bound the line."""
    if len(reason) <= REASON_BYTES // 12:
        return reason
    used = 0
    for end, char in enumerate(reason):
        used += len(json.dumps(char)) - 2
        if used > REASON_BYTES:
            return reason[:end]
    return reason


def _line(event: tuple) -> bytes:
    """One change as a JSON line, its time (last, of a note or failure) on the wall clock."""
    out = list(event)
    if out[0] == "note":
        out[3] = _cut(out[3])
    if out[0] in ("note", "fail"):
        out[-1] = out[-1] + time.time() - time.monotonic()
    if out[0] == "fail":
        out[2] = sorted(out[2])
    return (json.dumps(out, separators=(",", ":")) + "\n").encode()
