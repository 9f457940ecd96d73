"""The DICOM node's refusal notes (dicom_refused.RefusedImages) on disk in its ``--work`` folder, so
that a node killed outright (SIGKILL, the OOM killer, a power cut) and started again on the folder
still fails a series it takes up for an image refused before, and still holds a series that failed
so to a whole re-send.

The notes are kept as ``listen.refused``, one JSON line per change (a note made, a series
forgotten, an image taken, a failure remembered or dropped), each written and flushed to disk
(``fsync``) before the node answers the image it is about. A start reads the lines in order into
the notes, passing over a line cut short by the kill or otherwise unreadable (with one warning),
and rewrites the file from the notes read. The file is rewritten the same way, whole, under a
staged name, flushed and renamed, with the folder flushed, whenever the lines written since
outnumber those it was last rewritten with (and 1024): it stays within twice the notes' own
size, which their bounds bound. With no notes there is no file. Times are written as wall-clock
times, so the notes expire across a restart as they do in a node that runs on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgeseg.serve.dicom_work import sync_folder

log = logging.getLogger("edgeseg.listen")

NOTES_NAME = "listen.refused"
REASON_CHARS = 500  # a reason is a message; cut there, it still says why


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
    return kind != "fail" or all(isinstance(sop, str) for sop in args[1])


class RefusalJournal:
    """The file ``work/listen.refused``: :meth:`write` appends a change, :meth:`read` yields those
    written (times back on the monotonic clock), :meth:`rewrite` replaces them with a whole set.
    A change that cannot be written (the disk full, failing) is logged, and kept in memory only."""

    def __init__(self, work: str | os.PathLike) -> None:
        self.path = Path(work) / NOTES_NAME
        self._fd: int | None = None
        self.lines = 0  # the lines in the file now
        self.rewritten = 0  # the lines it was last rewritten with

    def read(self, most_bytes: int) -> Iterator[list]:
        """The changes in the file, in order, times on the monotonic clock; at most ``most_bytes``
        of it are read (past them, or past a line that cannot be read, one warning)."""
        if not self.path.is_file() or self.path.is_symlink():
            return
        shift = time.monotonic() - time.time()
        bad, read = 0, 0
        try:
            notes = open(self.path, "rb")
        except OSError as exc:
            log.warning("cannot read the refusal notes in %s (%s); the node starts without them", self.path,
                        exc.strerror or exc)
            return
        with notes:
            for line in notes:
                read += len(line)
                if read > most_bytes:
                    log.warning("%s is past %d bytes; the refusal notes after them are not read", self.path, most_bytes)
                    break
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
        and flush it to disk."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, _line(event))
            os.fsync(self._fd)
            self.lines += 1
        except OSError as exc:
            self.close()
            log.error("cannot note a refusal in %s (%s); a node started again on the folder does not know of it",
                      self.path, exc.strerror or exc)

    def rewrite(self, events: Iterable[tuple]) -> None:
        """Replace the file with ``events``, whole or not at all (none: the file is removed)."""
        from edgeseg.atomic import atomic_path

        self.close()
        events, count = list(events), 0
        try:
            if not events:
                if os.path.lexists(self.path):
                    self.path.unlink()
                    sync_folder(self.path.parent)
                self.lines = self.rewritten = 0
                return
            with atomic_path(self.path) as staged:
                with open(staged, "wb") as notes:
                    for event in events:
                        notes.write(_line(event))
                        count += 1
                    notes.flush()
                    os.fsync(notes.fileno())
            sync_folder(self.path.parent)
        except OSError as exc:
            log.error("cannot rewrite the refusal notes in %s (%s); the notes written before stand", self.path,
                      exc.strerror or exc)
            return
        self.lines = self.rewritten = count

    def grown(self) -> bool:
        """More lines were written since the last rewrite than it wrote (and 1024): time to write
        the notes anew, so that the file stays within twice their own size."""
        return self.lines - self.rewritten > max(1024, self.rewritten)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _line(event: tuple) -> bytes:
    """One change as a JSON line, its time (last, of a note or failure) on the wall clock."""
    out = list(event)
    if out[0] == "note":
        out[3] = out[3][:REASON_CHARS]
    if out[0] in ("note", "fail"):
        out[-1] = out[-1] + time.time() - time.monotonic()
    if out[0] == "fail":
        out[2] = sorted(out[2])
    return (json.dumps(out, separators=(",", ":")) + "\n").encode()
