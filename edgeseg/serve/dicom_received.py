"""The DICOM node's images received into files, not memory.

pynetdicom gathers a C-STORE's data set in memory until its last fragment has come, then the
handler decodes it (a second copy): ten associations each sending an Enhanced CT of 1 GB would
hold tens of GB. With ``pynetdicom._config.STORE_RECV_CHUNKED_DATASET`` (pynetdicom 2.0 and
later) each fragment is written as it comes to a temporary file in the DICOM file format
(``NamedTemporaryFile(delete=False)`` in ``tempfile.gettempdir()``: ``TMPDIR``); the handler is
given its path (``event.dataset_path``), and pynetdicom closes and removes the file once the
handler has returned (a removal that finds it gone is passed over). ``event.dataset`` then reads
the whole file with pydicom, pixels included, so the node never asks for it: it reads the header
here with its large elements deferred, checks the pixels frame by frame from the file, and stores
an Enhanced CT by a hard link of the file into its work folder (a copy only where the file
system refuses the link).

The setting is module-level, read by pynetdicom (``if _config.STORE_RECV_CHUNKED_DATASET``) in
the thread that decodes each C-STORE's command set, as its last fragment arrives. While a node
runs it holds an object (:class:`ToFileInNodeThreads`) that is true only in a node's association
thread whose C-STORE names an Enhanced CT class, the one whose data set is a whole series, and
in any other thread what the setting was before: another pynetdicom SCP in the process receives
as it did, and a slice still comes in memory. It is put back once the last node in the process
stops.

pynetdicom removes the file only once the handler has returned, and writes it with
``NamedTemporaryFile`` in ``TMPDIR``: a request the handler never saw (malformed, or still
queued when the peer aborted), a connection ending mid-way, a write that failed (a full disk,
which ended pynetdicom's reading thread and with it every close event) and a node killed outright
left files there for good. The node therefore owns its files: while a node runs, pynetdicom's
``NamedTemporaryFile`` is, in a node's association thread, :class:`ReceivedFiles.create`, which
writes into the node's ``received`` folder in its work folder (the hard link stays on one file
system) and keeps each file with its connection; the connection's socket, closed on every path
an association ends by, removes those no handler took (:meth:`ReceivedFiles.discard`); a write
that fails removes its file at once and drops the rest of the data set, which the handler then
answers 0xA700; and the folder is emptied as the node starts (and removed as it stops). In any
other thread pynetdicom creates its files as before. (``NamedTemporaryFile`` takes no folder
per thread: ``tempfile.tempdir`` would move every other user's temporary files too.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import tempfile
import threading
import uuid
from pathlib import Path
from typing import IO

# elements larger than this stay on disk until asked for: the pixel data, a padded private one
DEFER_BYTES = 1 << 20
# the 128-byte preamble, "DICM", and the File Meta Information Group Length element (PS3.10 7.1)
_BEFORE_META = 128 + 4 + 12
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)

_lock = threading.Lock()
_users = 0
_before: object = None
_before_file: object = None
# the files of every connection, by path: a handler (another thread) asks of its own
_files: dict[str, "ReceivedFile"] = {}
_thread = threading.local()


class ToFileInNodeThreads:
    """What the node sets pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` to: true in a node's
    association thread whose current C-STORE names a multi-frame class (:func:`next_to_file`,
    said by the node's socket as the command set completes, in the thread that reads the socket
    and decodes what it read), and in every other thread what the setting was before."""

    def __init__(self, before: object) -> None:
        self.before = before

    def __bool__(self) -> bool:
        to_file = getattr(_thread, "to_file", None)
        return bool(self.before) if to_file is None else bool(to_file)


def next_to_file(files: "ReceivedFiles | None") -> None:
    """The C-STORE whose command set the calling thread (a node's association) has just read is
    received to a file of ``files`` (its connection's), or in memory (None)."""
    _thread.to_file = files if files is not None else False


class ReceivedFile:
    """What pynetdicom writes one data set to (it calls ``write``, ``file.flush``, ``close`` and
    reads ``name``). A write that fails (no room on disk) closes and removes the file at once and
    drops the rest of the data set, keeping why in :attr:`failed`: pynetdicom would otherwise
    raise in its reading thread, which ends it without closing the connection."""

    def __init__(self, folder: Path, suffix: str) -> None:
        fd, self.name = tempfile.mkstemp(dir=folder, suffix=suffix)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.failed: str | None = None
        self.handed = False  # to the C-STORE handler: pynetdicom removes it after the handler
        self.owner: ReceivedFiles | None = None  # the connection's files it is among

    @classmethod
    def unmade(cls, folder: Path, suffix: str, exc: OSError) -> "ReceivedFile":
        """One that could not be made (no inode, quota, descriptor left), already failed: its
        writes are dropped, no file is there, and the handler answers as for a failed write."""
        file = cls.__new__(cls)
        file.name, file._file = str(folder / f"unmade-{uuid.uuid4().hex}{suffix}"), None
        file.failed, file.handed, file.owner = exc.strerror or str(exc), False, None
        return file

    @property
    def file(self) -> "ReceivedFile":
        return self

    def __bool__(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.failed is None:
            try:
                self._file.write(data)
            except (OSError, ValueError) as exc:  # ValueError: closed by the connection's end meanwhile
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self._file.flush()
            except (OSError, ValueError) as exc:
                self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.failed = getattr(exc, "strerror", None) or str(exc)
        self.remove()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.name)


class ReceivedFiles:
    """The files one connection's data sets were received to, in the node's ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._mine: list[ReceivedFile] = []

    def create(self, **kwargs) -> ReceivedFile:
        """pynetdicom's ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``. One that
        cannot be made is returned failed: raised here, it would end pynetdicom's reading thread
        with no answer to the peer."""
        try:
            file = ReceivedFile(self.folder, kwargs.get("suffix", ""))
        except OSError as exc:
            file = ReceivedFile.unmade(self.folder, kwargs.get("suffix", ""), exc)
        file.owner = self
        with _lock:
            _files[file.name] = file
            self._mine.append(file)
        return file

    def drop(self, file: ReceivedFile) -> None:
        """``file`` is no more this connection's (a handler took it); called holding the lock."""
        with contextlib.suppress(ValueError):
            self._mine.remove(file)

    def discard(self) -> None:
        """The connection has closed: remove every file no handler took (a request pynetdicom
        refused, one still queued, one cut off mid-way)."""
        with _lock:
            mine, self._mine = self._mine, []
            left = [file for file in mine if not file.handed]
            for file in mine:
                _files.pop(file.name, None)
        for file in left:
            file.failed = file.failed or "the connection closed"  # what pynetdicom still writes is dropped
            file.remove()


def _named_temporary_file(**kwargs):
    """pynetdicom's ``NamedTemporaryFile`` while a node runs: the node's own in its threads."""
    files = getattr(_thread, "to_file", None)
    if isinstance(files, ReceivedFiles):
        return files.create(**kwargs)
    return _before_file(**kwargs)


def write_failure(path: Path | None) -> str | None:
    """Why the data set received to ``path`` could not be written whole (the disk full), or None."""
    with _lock:
        file = _files.get(str(path))
    return None if file is None else file.failed


def prepare_received_folder(work: Path) -> Path:
    """The node's ``received`` folder in ``work``, emptied: the files of a node killed outright."""
    from edgeseg.errors import DataError

    folder = work / "received"
    try:
        if folder.is_symlink() or folder.is_file():
            folder.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot make the folder {folder} to receive images into: {exc.strerror or exc}") from None
    return folder


def check_receive_path() -> None:
    """Refuse a pynetdicom without the receive path the node takes over (before 2.0, or a later
    one that dropped it); the node asks before it configures anything else of pynetdicom's, whose
    names before 2.0 differ too (``sop_class.VerificationSOPClass``)."""
    import pynetdicom
    from edgeseg.errors import DataError
    from pynetdicom import _config, dimse_messages

    missing = [name for module, name in ((_config, "STORE_RECV_CHUNKED_DATASET"),
                                         (dimse_messages, "NamedTemporaryFile")) if not hasattr(module, name)]
    if missing:  # another pynetdicom than the 2.0-3.0 line whose receive path the node takes over
        raise DataError(f"pynetdicom {pynetdicom.__version__} has no {', '.join(missing)}, which the node "
                        f"receives Enhanced CT into files with; install edgeseg[dicom]'s pynetdicom (>=3.0)")


def start_receiving_to_files() -> None:
    """Have pynetdicom write the node's multi-frame C-STORE data sets to files from now on (for
    one more node in the process)."""
    global _users, _before, _before_file
    from pynetdicom import _config, dimse_messages

    with _lock:
        if _users == 0:
            check_receive_path()
            _before = _config.STORE_RECV_CHUNKED_DATASET
            _config.STORE_RECV_CHUNKED_DATASET = ToFileInNodeThreads(_before)
            _before_file = dimse_messages.NamedTemporaryFile
            dimse_messages.NamedTemporaryFile = _named_temporary_file
        _users += 1


def stop_receiving_to_files() -> None:
    """One node fewer: once none is left, the setting is put back to what it was before the first."""
    global _users
    from pynetdicom import _config, dimse_messages

    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            _config.STORE_RECV_CHUNKED_DATASET = _before
            dimse_messages.NamedTemporaryFile = _before_file


def received_path(event) -> Path | None:
    """The file pynetdicom wrote the C-STORE's data set to, or None where it is in memory."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path is not None else None


def read_received(path: Path):
    """(data set, the bytes it took on the wire) of a data set received to ``path``: its header
    read, its elements over :data:`DEFER_BYTES` (the pixel data) left in the file."""
    import pydicom

    ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    meta = int(ds.file_meta.get("FileMetaInformationGroupLength", 0))
    return ds, path.stat().st_size - _BEFORE_META - meta


def pixel_data_bytes(ds, path: Path | None) -> int:
    """The bytes of ``ds``'s pixel data, read from ``path`` where it was left there: the length its
    element gives, or for encapsulated pixel data the items up to the sequence delimiter."""
    if "PixelData" not in ds:
        return 0
    element = ds.get_item("PixelData", keep_deferred=True)
    if path is None or element.value is not None:
        return len(ds.PixelData)
    if element.length != 0xFFFFFFFF:
        return element.length
    size, little = 0, ds.original_encoding[1] is not False
    with open(path, "rb") as file:
        file.seek(element.value_tell)
        while header := file.read(8):
            if len(header) < 8:
                break
            group, number, length = struct.unpack("<HHI" if little else ">HHI", header)
            size += 8
            if (group, number) == _SEQUENCE_DELIMITER:
                break
            size += length
            file.seek(length, os.SEEK_CUR)
    return size


def place_received(source: Path, staged: Path) -> None:
    """Put the received file ``source`` at ``staged`` (an empty staging file): a hard link, its
    bytes written once, or a copy where the two lie on different file systems."""
    staged.unlink()
    try:
        os.link(source, staged)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        shutil.copyfile(source, staged)


def removed_on_failure(handler):
    """``handler`` (the C-STORE handler) taking the file its data set was received to from its
    connection (pynetdicom removes it once the handler has returned), and removing it where the
    handler raises."""
    def handled(event):
        path, file = received_path(event), None
        if path is not None:
            with _lock:
                file = _files.get(str(path))
                if file is not None:
                    file.handed = True
        try:
            return handler(event)
        except BaseException:
            if path is not None:
                if file is not None:
                    file.close()  # pynetdicom closes it only after a handler that returned
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        finally:
            if path is not None:
                with _lock:
                    _files.pop(str(path), None)
                    if file is not None and file.owner is not None:  # no more the connection's to remove
                        file.owner.drop(file)

    return handled
