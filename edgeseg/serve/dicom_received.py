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
an Enhanced CT by a hard link of the file into its work folder (a copy only where the work folder
lies on another file system than ``TMPDIR``).

The setting is module-level, read by pynetdicom (``if _config.STORE_RECV_CHUNKED_DATASET``) in
the thread that decodes each C-STORE's command set, as its last fragment arrives. While a node
runs it holds an object (:class:`ToFileInNodeThreads`) that is true only in a node's association
thread whose C-STORE names an Enhanced CT class, the one whose data set is a whole series, and
in any other thread what the setting was before: another pynetdicom SCP in the process receives
as it did, and a slice still comes in memory (a disk with no room for it then answers 0xA700
rather than ending the association, as pynetdicom does when its write to the file fails). It is
put back once the last node in the process stops.

pynetdicom removes the file only once the handler has returned; a connection ending while a data
set was arriving (an abort, the node's own bound on a message) would leave the part received in
``TMPDIR`` for good, so the node removes it as the connection closes (:func:`discard_partial`),
and the file of a handler that raised too (:func:`removed_on_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import threading
from pathlib import Path

# elements larger than this stay on disk until asked for: the pixel data, a padded private one
DEFER_BYTES = 1 << 20
# the 128-byte preamble, "DICM", and the File Meta Information Group Length element (PS3.10 7.1)
_BEFORE_META = 128 + 4 + 12
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)

_lock = threading.Lock()
_users = 0
_before: object = None
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
        return bool(self.before) if to_file is None else to_file


def next_to_file(to_file: bool) -> None:
    """The C-STORE whose command set the calling thread (a node's association) has just read is
    received to a file (``to_file``) or in memory."""
    _thread.to_file = to_file


def start_receiving_to_files() -> None:
    """Have pynetdicom write the node's multi-frame C-STORE data sets to files from now on (for
    one more node in the process)."""
    global _users, _before
    from pynetdicom import _config

    with _lock:
        if _users == 0:
            _before = _config.STORE_RECV_CHUNKED_DATASET
            _config.STORE_RECV_CHUNKED_DATASET = ToFileInNodeThreads(_before)
        _users += 1


def stop_receiving_to_files() -> None:
    """One node fewer: once none is left, the setting is put back to what it was before the first."""
    global _users
    from pynetdicom import _config

    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            _config.STORE_RECV_CHUNKED_DATASET = _before


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
    """``handler`` (the C-STORE handler) removing the file its data set was received to when it
    raises: pynetdicom removes the file only after a handler that returned."""
    def handled(event):
        try:
            return handler(event)
        except BaseException:
            path = received_path(event)
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise

    return handled


def discard_partial(event) -> None:
    """pynetdicom's EVT_CONN_CLOSE: remove the file of a data set whose connection ended before
    its last fragment (pynetdicom removes only those its handler was called with). The message
    being received is pynetdicom's; one complete is handed on and no longer there."""
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is None:
        return
    with contextlib.suppress(OSError):
        partial.close()
    with contextlib.suppress(OSError):
        os.unlink(partial.name)
