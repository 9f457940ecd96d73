"""Where ``/v1/segment`` writes upload bodies as they arrive, and how many of their bytes it holds.

Bodies still arriving are not in any queue, so without a bound N slow clients could hold N
bodies of ``--max-body-mb`` each and fill the folder. Every upload takes its bytes from one
:class:`~edgeseg.serve.inflight.ByteBudget` before they are written: all of them at once when
its ``Content-Length`` announces them (a body that does not fit is refused before a byte of it
is read), else as each chunk arrives; a compressed body takes its decompressed bytes too, as
they are written beside it. They are given back when the upload's folder is removed.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgeseg.serve.http_errors import HttpError
from edgeseg.serve.inflight import ByteBudget
from edgeseg.serve.work_folder import check_work_folder

DISK_OPTION = "--max-upload-disk-bytes"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # EFBIG: a file size limit (RLIMIT_FSIZE)
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# bytes a mask file holds beyond its labels, at most: an NPY or NIfTI header, the provenance a
# NIfTI or PNG mask carries, and what deflate adds to data it cannot compress
MASK_HEADER_BYTES = 16 << 10


def mask_bytes(voxels: int) -> int:
    """The most bytes the mask file of a volume of ``voxels`` voxels takes: a byte a voxel (label
    values are uint8), plus deflate's worst case growth (zlib's compressBound) and its header."""
    return voxels + (voxels >> 12) + (voxels >> 14) + MASK_HEADER_BYTES


@dataclass(frozen=True)
class UploadDisk:
    """The folder uploads are written in (None: the temporary folder at the time) and the budget
    of their bytes there."""

    folder: Path | None
    budget: ByteBudget


def upload_disk(folder: str | os.PathLike | None, limit: int) -> UploadDisk:
    """Uploads written under ``folder`` (None: the temporary folder, ``TMPDIR``), at most
    ``limit`` bytes of them at once."""
    where = Path(folder) if folder is not None else None
    return UploadDisk(where, ByteBudget(limit, DISK_OPTION, "upload bodies on disk", "upload disk budget"))


def check_upload_folder(folder: str | None) -> Path:
    """The folder uploads will be written in, checked before the server starts: ``folder``, or
    the one ``TMPDIR`` names (see :func:`~edgeseg.serve.work_folder.check_work_folder`)."""
    return check_work_folder(folder, "--upload-dir", "uploads to /v1/segment")


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system (or the user's quota on it) has no room left: an
    errno saying so, or numpy's short write (``np.save`` on a full disk raises OSError("N
    requested and M written"), with no errno)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno is None:
        return bool(exc.args) and _SHORT_WRITE.fullmatch(str(exc.args[0])) is not None
    return exc.errno in _FULL


def no_room() -> HttpError:
    """The answer to an upload its folder had no room for (507 Insufficient Storage, RFC 4918):
    the server's failing, not the client's."""
    return HttpError(507, "the server has no room left on disk to store the upload; retry later")
