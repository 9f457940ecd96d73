"""Telling a DICOM file by its name or its magic bytes, without pydicom.

Here, not in :mod:`edgeseg.data.dicom`, so that ``edgeseg predict`` can tell a DICOM input (an
Enhanced CT file) from a file of no known kind in an install without the ``io`` extra, and name
the extra only for the former.
"""

from __future__ import annotations

import os
from pathlib import Path


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """Cheap check without parsing: a .dcm name or the "DICM" magic at byte 128."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
