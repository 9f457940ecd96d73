"""The audit log of ``edgeseg serve`` and ``edgeseg listen``: one JSON line per event.

Off unless ``--audit-log PATH`` is given. Each line is one JSON object, appended with a single
``write`` on an ``O_APPEND`` descriptor, so that a crash loses no earlier line and concurrent
requests never interleave within a line, and under an exclusive ``flock`` on the file, so that
several processes (two servers, a server and ``edgeseg listen``) can share one log: a line one of
them could write only part of is cut off again before another appends its own. Every line carries ``time`` (UTC, ISO 8601 with milliseconds), ``event`` and the
model that answered (:func:`edgeseg.runtime.provenance.provenance`: bundle manifest sha256,
artifact sha256, backend, precision, edgeseg version). Events:

- ``http_request`` (serve): ``request_id`` (the client's ``X-Request-ID`` where it sent a usable
  one, else a new one; echoed in the response header), ``peer`` (address:port, an IPv6 address
  in brackets), ``method``,
  ``path``, ``model`` (the served model's name, for ``/v2/models/NAME`` and the routes under it),
  ``status``, ``outcome`` (``ok`` for a 2xx answer, else ``error``), ``error`` (for a failure
  of the server itself, answered 500: what failed, which the answer does not say), ``latency_ms``.
- ``grpc_request`` (serve --grpc-port): the fields of ``http_request`` for one gRPC call (the
  probes ``ServerLive`` and ``ServerReady`` left out): ``method`` the RPC, ``path`` its full
  name, ``status`` the gRPC code name (``OK`` for an answer; ``CANCELLED`` or
  ``DEADLINE_EXCEEDED`` for a call its client cancelled or whose deadline passed; RPCs the server
  does not implement are lines too, ``UNIMPLEMENTED``); the request ID from the call's
  ``x-request-id`` metadata.
- ``association`` (listen): ``peer`` (address:port), ``calling_ae``, ``called_ae``, the number of
  images ``stored`` and ``refused``, ``outcome`` (``released``, ``aborted``, ``rejected``).
- ``series`` (listen): ``study_uid``, ``series_uid``, ``slices``, ``seg_sop_instance_uid`` and
  ``seg_file``, ``replaces`` (the SOP Instance UID of the SEG of the same series this one, made
  with images that came after it, replaces), ``outcome`` (``segmented`` or ``failed`` with
  ``error``), ``latency_ms``.
- ``refused_connection`` and ``refused_connections`` (listen): connections refused for the
  node's connection limits, one by one and then coalesced (dicom_refusal_audit.py).

No line holds a patient's name, ID, birth date or any other attribute of the data set beyond the
study and series instance UIDs, nor a request's body or query string.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import socket
import stat
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from pathlib import Path

from edgeseg.errors import DataError
from edgeseg.runtime.runners.remote import host_port

log = logging.getLogger("edgeseg.audit")

# a client's request id is echoed and logged: printable ASCII of a bounded length only
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def request_id(given: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a short token, else a new random one: a header
    value is the client's to choose, and a long or odd one must not reach the log."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


# What a write refused for want of room says: a full disk, a full quota, a file size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PIPE_WAIT = 2.0  # seconds a line waits for room in a pipe whose reader is behind
# names of this process's own open descriptors, and the descriptor each names
_OWN_DESCRIPTOR = re.compile(r"/dev/(?:std(in|out|err)|fd/(\d+))|/proc/self/fd/(\d+)")


class AuditLogError(DataError):
    """A line could not be appended to the audit log (nothing of it is left there)."""

    def __init__(self, path: Path, exc: OSError) -> None:
        self.reason = exc.strerror or str(exc)
        super().__init__(f"cannot append to the audit log {path}: {self.reason}")
        self.no_room = exc.errno in NO_ROOM


def _open_for_appending(path: Path) -> int:
    """A descriptor appending to ``path``. One of this process's own descriptors by name
    (``/dev/stdout``, ``/dev/fd/N``) that cannot be opened again is duplicated instead: a pipe
    another user made (a container runtime's, for a process run as an unprivileged user), or a
    stream socket (a service manager's journal), which no one can open by name. The process may
    write to what it already holds open."""
    try:
        # non-blocking only while opening, so that a FIFO nothing reads is refused, not waited on
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o640)
    except OSError as exc:
        own = _OWN_DESCRIPTOR.fullmatch(str(path))
        if own is None or exc.errno not in (errno.EACCES, errno.EPERM, errno.ENXIO):
            raise
        std, fd = own.group(1), own.group(2) or own.group(3)
        fd = ("in", "out", "err").index(std) if std else int(fd)
        if exc.errno == errno.ENXIO and not _is_stream_socket(fd):  # a FIFO without a reader: refused
            raise
        return os.dup(fd)


def _is_stream_socket(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
    except OSError:
        return False
    held = socket.socket(fileno=os.dup(fd))  # its own descriptor: closing it leaves fd open
    with held:
        return held.type == socket.SOCK_STREAM


class AuditLog:
    """Appends one JSON line per :meth:`record` to ``path``; ``model`` (the provenance record,
    set once the bundle is loaded) is added to every line. Opened at once, so that a path that
    cannot be written is refused before the bundle is loaded.

    A line the disk takes only part of (full, or at a file size limit) is cut off again, so the
    log never holds half a line with the next one run into it; :class:`AuditLogError` then says
    so, and the next line is appended once there is room. The cut is made holding the file's
    ``flock``, which every writer holds to append, so it never takes another process's line."""

    def __init__(self, path: str | os.PathLike, model: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise DataError(f"--audit-log {self.path} is a folder; name a file")
        try:
            # unbuffered, appended: one os-level write per line, never a half line from another thread
            self._fd = _open_for_appending(self.path)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise DataError(_unopenable(self.path)) from None
            raise DataError(f"--audit-log {self.path}: cannot open it for appending ({exc.strerror or exc})") from None
        # a pipe or terminal (/dev/stdout under a container runtime, a FIFO a log shipper reads) takes each
        # line in order, with no end to find and nothing to cut off again; it stays non-blocking, so that
        # a reader that stalls (a log driver falling behind) costs a line, never a stuck server
        mode = os.fstat(self._fd).st_mode
        self._file = stat.S_ISREG(mode)
        if self._file:
            os.set_blocking(self._fd, True)
        # a socket (stdout given to the journal) is sent to with MSG_DONTWAIT: its descriptor is the
        # process's stdout, which must stay blocking, and poll's room there is no promise for a write
        self._socket = socket.socket(fileno=self._fd) if stat.S_ISSOCK(mode) else None
        self._stalled = False  # the last line found the pipe full: the next one does not wait for room
        self._torn = False  # a line was cut off partway: the next one starts on a new line
        self.model = dict(model or {})
        self._lock = threading.Lock()

    def record(self, event: str, **fields) -> None:
        """Append one line: ``time``, ``event``, ``fields`` (None values left out), the model."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"time": now, "event": event, **{k: v for k, v in fields.items() if v is not None},
                "bundle": self.model}
        data = (json.dumps(line, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                self._append(data)

    def _append(self, data: bytes) -> None:
        with _file_locked(self._fd):  # the end found here stays the end until the line is in
            if not self._file:  # under the lock too: a line longer than PIPE_BUF is never split by another's
                self._write_stream(data)
                return
            try:
                end = os.lseek(self._fd, 0, os.SEEK_END)
            except OSError as exc:  # a failing disk: nothing was written
                raise AuditLogError(self.path, exc) from None
            try:
                _write_all(self._fd, data)  # one write; one past the room left is short, and the next one fails
            except OSError as exc:
                with contextlib.suppress(OSError):  # nothing more to do: the error below says the line is missing
                    os.ftruncate(self._fd, end)
                raise AuditLogError(self.path, exc) from None

    def _write_stream(self, data: bytes) -> None:
        """Write ``data`` to the pipe or terminal, waiting at most PIPE_WAIT seconds for room (none
        while its reader is behind already); AuditLogError when the reader is gone or stalled. Each
        write is one that fits the room poll reported (PIPE_BUF), so that it never blocks, even on
        a descriptor shared with the process's stdout, which must stay blocking."""
        line = b"\n" + data if self._torn else data
        rest = memoryview(line)
        deadline = time.monotonic() + (0.0 if self._stalled else PIPE_WAIT)
        while rest:
            if _writable(self._fd, deadline - time.monotonic()):
                try:
                    sent = self._send(rest[:select.PIPE_BUF])
                except BlockingIOError:  # another process took the room first: wait again
                    sent = 0
                except OSError as exc:  # the reader is gone (EPIPE): the line is lost
                    raise AuditLogError(self.path, exc) from None
                rest = rest[sent:]
                if sent:
                    continue
            if time.monotonic() >= deadline:
                self._stalled = True
                self._torn = self._torn or len(rest) < len(line)  # a line past PIPE_BUF went out in part
                raise AuditLogError(self.path, OSError(errno.EAGAIN, "its reader takes nothing more"))
        self._stalled = self._torn = False

    def _send(self, chunk: memoryview) -> int:
        if self._socket is not None:
            return self._socket.send(chunk, socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0))
        return os.write(self._fd, chunk)

    def shares_stdout(self) -> bool:
        """Whether the lines go where this process's stdout goes (``/dev/stdout``, or the file or
        pipe it names): a start-up line printed there would sit among the JSON lines."""
        with contextlib.suppress(OSError):
            ours, stdout = os.fstat(self._fd), os.fstat(1)
            return (ours.st_dev, ours.st_ino) == (stdout.st_dev, stdout.st_ino)
        return False

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                if self._socket is not None:
                    self._socket.detach()
                os.close(self._fd)
                self._fd = None


def _unopenable(path: Path) -> str:
    """Why ``path`` cannot be opened for writing (ENXIO): a socket, or a FIFO without a reader."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode) and _OWN_DESCRIPTOR.fullmatch(str(path)):
            return f"--audit-log {path} is a socket other than a stream (a datagram socket); it takes no lines"
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return (f"--audit-log {path} is a socket, which cannot be opened by name; give the command's stdout "
                    "to it and name /dev/stdout (systemd: StandardOutput=journal)")
    return f"--audit-log {path}: nothing reads it (a FIFO without a reader)"


def _writable(fd: int, seconds: float) -> bool:
    """Whether ``fd`` takes a write of PIPE_BUF bytes without blocking, or fails at once (its
    reader gone), within ``seconds``."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(max(0, int(seconds * 1000))))


def _write_all(fd: int, data: bytes) -> None:
    rest = memoryview(data)
    while rest:
        rest = rest[os.write(fd, rest):]


@contextlib.contextmanager
def _file_locked(fd: int):
    """Hold an exclusive ``flock`` on the open file ``fd`` (waiting for another process's append);
    no lock where the OS or the filesystem has none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    locked = False
    with contextlib.suppress(OSError):  # e.g. ENOLCK on a filesystem without locks: each line is still one write
        fcntl.flock(fd, fcntl.LOCK_EX)
        locked = True
    try:
        yield
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)


_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/|$)")


def peer_address(peer: str) -> str:
    """``HOST:PORT`` of a gRPC peer (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``) as the
    ``http_request`` lines write theirs (an IPv6 address in brackets); another form (a Unix
    socket) as gRPC gives it."""
    kind, _, address = peer.partition(":")
    host, _, port = urllib.parse.unquote(address).rpartition(":")
    if kind not in ("ipv4", "ipv6") or not port.isdigit():
        return peer
    return host_port(host.removeprefix("[").removesuffix("]"), int(port))


def audit_request(audit: AuditLog, request, rid: str, status: int, seconds: float, error: str | None = None) -> None:
    """The ``http_request`` line of one answered HTTP request (a Starlette ``request``); ``error``:
    what failed, for an answer that was the server's failure (500)."""
    client = request.client
    path = request.url.path
    model = _MODEL_PATH.match(path)
    audit.record("http_request", request_id=rid, peer=host_port(client.host, client.port) if client else None,
                 method=request.method, path=path[:200], model=model.group(1) if model else None, status=status,
                 outcome="ok" if 200 <= status < 300 else "error", error=error, latency_ms=round(seconds * 1e3, 3))


class AssociationAudit:
    """The ``association`` and ``series`` lines of ``edgeseg listen``: counts each association's
    C-STORE answers (:meth:`counted` wraps the handler) and logs the association when it ends.

    A line the audit log cannot take is one error line in the node's log: the association has
    ended and the SEG is written by then, and the node must go on to the next."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._counts: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def counted(self, handler):
        """``handler`` (a C-STORE handler) counting its answers per association."""
        def store(event):
            status = handler(event)
            code = status if isinstance(status, int) else getattr(status, "Status", None)
            with self._lock:
                self._counts.setdefault(id(event.assoc), [0, 0])[0 if code == 0 else 1] += 1
            return status
        return store

    def ended(self, event, outcome: str) -> None:
        """Log the association of ``event`` (released, aborted or rejected) with its counts."""
        assoc = event.assoc
        with self._lock:
            stored, refused = self._counts.pop(id(assoc), [0, 0])
        requestor = assoc.requestor
        called = getattr(requestor.primitive, "called_ae_title", None) if requestor.primitive else None
        self._record("association", peer=f"{requestor.address}:{requestor.port}",
                     calling_ae=_text(requestor.ae_title), called_ae=_text(called), stored=stored,
                     refused=refused, outcome=outcome)

    def series(self, series_uid: str, seconds: float, *, study_uid=None, slices=None, seg=None,
               error: str | None = None, replaces: str | None = None) -> None:
        """Log one series: segmented into ``seg`` (the SEG file), or failed with ``error``."""
        seg_uid = None
        if seg is not None:
            import pydicom

            seg_uid = str(pydicom.dcmread(seg, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        self._record("series", study_uid=study_uid, series_uid=series_uid, slices=slices,
                     seg_sop_instance_uid=seg_uid, seg_file=None if seg is None else Path(seg).name, replaces=replaces,
                     outcome="failed" if error is not None else "segmented",
                     error=None if error is None else " ".join(error.split())[:300],
                     latency_ms=round(seconds * 1e3, 3))

    def recovered(self, series_uid: str, images: int, outcome: str, previous_pid: int | None) -> None:
        """Log one series a node starting on its --work folder found there, left by an earlier node:
        ``outcome`` "in_flight" (to be segmented), "kept" (for late images) or "over_limit" (``images``
        set aside in the folder's over-limit/: with the rest of the series, past the volume limit or a
        mix of an Enhanced CT and slices)."""
        self._record("recovered", series_uid=series_uid, images=images, outcome=outcome, previous_pid=previous_pid)

    def _record(self, event: str, **fields) -> None:
        try:
            self.audit.record(event, **fields)
        except AuditLogError as exc:
            log.error("%s; its %s line is lost", exc, event)


def _text(value) -> str | None:
    if value is None:
        return None
    return (value.decode(errors="replace") if isinstance(value, bytes) else str(value)).strip()
