"""gzip data read to its end, so that its CRC-32 and length are checked.

A gzip stream only proves its data intact at its end: the trailer holds the CRC-32 and the
length of everything before it. Readers that stop once they hold the bytes they need (nibabel
reads a ``.nii.gz`` up to its last voxel; pynrrd decodes what it is given and never asks whether
the stream ended) hand back garbage from a corrupt or cut file without a word. These helpers read
to the end while the data streams through, so the check costs the trailer, not a second pass.
"""

from __future__ import annotations

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


def inflate_exact(handle: BinaryIO, size: int, source: str) -> np.ndarray:
    """The ``size`` bytes (uint8) of the gzip stream that ``handle`` holds from its position to its
    end, decompressed into one array as they stream in; DataError naming ``source`` when the
    stream is corrupt (CRC-32 or length), ends early, decodes to another size, or has bytes after
    its end."""
    out = np.empty(size, dtype=np.uint8)
    stream = zlib.decompressobj(16 + zlib.MAX_WBITS)
    filled = 0
    try:
        while not stream.eof:
            data = stream.unconsumed_tail or handle.read(_CHUNK)
            if not data:
                raise DataError(f"cannot read {source}: its gzip data is truncated (the file ends before the "
                                f"end of the stream, after {filled} of {size} bytes)")
            # one byte past the expected size: enough to tell that the data is too long
            part = stream.decompress(data, size - filled + 1)
            if filled + len(part) > size:
                raise DataError(f"cannot read {source}: its gzip data holds more than the {size} bytes its "
                                "header gives")
            out[filled:filled + len(part)] = np.frombuffer(part, dtype=np.uint8)
            filled += len(part)
    except zlib.error as exc:
        raise DataError(f"cannot read {source}: {gzip_problem(exc)}") from None
    if filled != size:
        raise DataError(f"cannot read {source}: its gzip data holds {filled} bytes; its header gives {size}")
    after = len(stream.unused_data) + len(handle.read(1))
    if after:
        raise DataError(f"cannot read {source}: bytes follow the end of its gzip data; expected none")
    return out
