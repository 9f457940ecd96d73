"""gzip (and bzip2) data read to its end, so that its CRC-32 and length are checked.

A gzip stream only proves its data intact at its end: the trailer holds the CRC-32 and the
length of everything before it. Readers that stop once they hold the bytes they need (nibabel
reads a ``.nii.gz`` up to its last voxel; pynrrd decodes what it is given and never asks whether
the stream ended) hand back garbage from a corrupt or cut file without a word. These helpers read
to the end while the data streams through, so the check costs the trailer, not a second pass.
"""

from __future__ import annotations

import bz2
import gzip
import zlib
from typing import BinaryIO

import numpy as np

from edgeseg.errors import DataError

# Decompressed bytes a stream may hold after the data a reader wanted before it is refused
# unread: writers leave none, and inflating a hostile tail of gigabytes costs seconds of CPU.
MAX_TAIL = 64 << 20
_CHUNK = 1 << 20

# What gzip and zlib raise for a corrupt or cut stream.
GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


def gzip_problem(exc: BaseException) -> str:
    """Words for the gzip or zlib error ``exc``: says corrupt or truncated, then the detail."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EOFError):
        return f"its gzip data is truncated ({detail})"
    return f"its gzip data is corrupt ({detail})"


def finish_gzip(stream: gzip.GzipFile, source: str) -> None:
    """Read ``stream`` (positioned after the data a reader took) to its end and close it, so that
    Python's gzip checks each member's CRC-32 and length; DataError naming ``source`` for a
    corrupt or truncated stream, or one holding more than MAX_TAIL bytes after that data."""
    try:
        tail = 0
        while chunk := stream.read(_CHUNK):
            tail += len(chunk)
            if tail > MAX_TAIL:
                raise DataError(f"{source}: more than {MAX_TAIL} bytes follow its voxels in the gzip stream; "
                                "expected none (a corrupt or hostile file)")
    except GZIP_ERRORS as exc:
        raise DataError(f"cannot read {source}: {gzip_problem(exc)}") from None
    finally:
        stream.close()


def streamed(image, path):
    """The nibabel ``image`` of the ``.nii.gz`` file ``path`` opened again through a gzip stream of
    its own, for :func:`finish_gzip` after the voxels: nibabel reads up to the last voxel, short of
    the trailer (and with indexed_gzip installed, its reader checks no CRC at all)."""
    stream = gzip.GzipFile(path, "rb")
    try:
        return type(image).from_stream(stream)
    except BaseException:
        stream.close()
        raise


def image_stream(image) -> gzip.GzipFile | None:
    """The gzip stream of an image from :func:`streamed`, else None."""
    fileobj = image.file_map["image"].fileobj
    return fileobj if isinstance(fileobj, gzip.GzipFile) else None


def close_stream(image) -> None:
    """Close the gzip stream of an image from :func:`streamed` (nothing for another image)."""
    stream = image_stream(image)
    if stream is not None:
        stream.close()


def inflate_exact(handle: BinaryIO, size: int, source: str, encoding: str = "gzip", skip: int = 0) -> np.ndarray:
    """The ``size`` bytes (uint8) of the gzip (or, ``encoding`` "bzip2", bzip2) stream that
    ``handle`` holds from its position to its end, after the first ``skip`` decompressed bytes
    (NRRD's byte skip, which applies to the decompressed data), decompressed into one array as
    they stream in; DataError naming ``source`` when the stream is corrupt (a CRC or length),
    ends early, decodes to another size, or has bytes after its end."""
    stream = _Decompressor(encoding)
    name = stream.name
    if not 0 <= skip <= MAX_TAIL:
        raise DataError(f"cannot read {source}: a byte skip of {skip} in {name} data; expected 0 to {MAX_TAIL}")
    out = np.empty(size, dtype=np.uint8)
    total = size + skip
    seen = 0  # decompressed bytes so far, the skipped ones included
    try:
        while not stream.eof:
            data = stream.next_input(handle)
            if data is None:
                raise DataError(f"cannot read {source}: its {name} data is truncated (the file ends before the "
                                f"end of the stream, after {max(0, seen - skip)} of {size} bytes)")
            # one byte past the expected size: enough to tell that the data is too long
            part = stream.decompress(data, total - seen + 1)
            if seen + len(part) > total:
                raise DataError(f"cannot read {source}: its {name} data holds more than the {size} bytes its "
                                "header gives")
            kept = part[max(0, skip - seen):]
            start = max(0, seen - skip)
            out[start:start + len(kept)] = np.frombuffer(kept, dtype=np.uint8)
            seen += len(part)
    except (*GZIP_ERRORS, OSError) as exc:  # bz2 says OSError("Invalid data stream")
        raise DataError(f"cannot read {source}: {gzip_problem(exc).replace('gzip', name)}") from None
    if seen != total:
        raise DataError(f"cannot read {source}: its {name} data holds {max(0, seen - skip)} bytes; its header "
                        f"gives {size}")
    after = len(stream.unused_data) + len(handle.read(1))
    if after:
        raise DataError(f"cannot read {source}: bytes follow the end of its {name} data; expected none")
    return out


class _Decompressor:
    """zlib's gzip decompressor or bz2's, behind one interface: both keep input they have not yet
    decompressed, zlib handing it back (``unconsumed_tail``), bz2 holding it itself."""

    def __init__(self, encoding: str) -> None:
        self.bzip2 = encoding in ("bzip2", "bz2")
        self.name = "bzip2" if self.bzip2 else "gzip"
        self._stream = bz2.BZ2Decompressor() if self.bzip2 else zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def eof(self) -> bool:
        return self._stream.eof

    @property
    def unused_data(self) -> bytes:
        return self._stream.unused_data

    def next_input(self, handle: BinaryIO) -> bytes | None:
        """What to decompress next: input held back, else the file's next chunk; None at the
        file's end."""
        if self.bzip2:
            return (handle.read(_CHUNK) or None) if self._stream.needs_input else b""
        return self._stream.unconsumed_tail or handle.read(_CHUNK) or None

    def decompress(self, data: bytes, limit: int) -> bytes:
        return self._stream.decompress(data, limit)
