"""Whether an image file the DICOM node stored is whole: a node ended outright may leave one
cut short, and the node starting on its ``--work`` folder takes up only whole ones
(dicom_work.py)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES

# an encapsulated Pixel Data element's length (PS3.5 A.4)
UNDEFINED_LENGTH = 0xFFFFFFFF


def whole_image(path: Path) -> tuple[int, tuple[int, int], bool] | None:
    """(frames, (rows, columns), whether it is a multi-frame image) of an image file holding all
    its pixel data, else None. The pixel data is never decoded: uncompressed (as the node stores a
    slice), its element must claim the bytes its size needs and the file must hold them all;
    encapsulated (an Enhanced CT is stored as it came), pydicom must find the sequence delimiter
    that closes it (a file cut short has none, and loses the element) and the items after the
    Basic Offset Table must parse as fragments, at least one for each frame. Elements after the pixel
    data (trailing padding, digital signatures) are allowed."""
    import pydicom

    try:
        with warnings.catch_warnings():  # a file cut short: pydicom warns, and the file is set aside
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=4096)
        frames, rows, columns = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
        multiframe = frames > 1 or str(ds.get("SOPClassUID", "")) in ENHANCED_CT_CLASSES
        pixels = ds.get_item("PixelData", keep_deferred=True)
        if pixels is not None and pixels.length == UNDEFINED_LENGTH:
            return (frames, (rows, columns), multiframe) if _fragments(path, pixels) >= frames else None
        need = frames * rows * columns * ((int(ds.BitsAllocated) + 7) // 8)
        if pixels is None or pixels.length < need:
            return None
        tell = getattr(pixels, "value_tell", None)  # none where the value was read (under defer_size)
        if len(pixels.value) < need if tell is None else tell + pixels.length > path.stat().st_size:
            return None
        return frames, (rows, columns), multiframe
    except Exception:  # truncated, not DICOM, no pixel data: not a whole image
        return None


def _fragments(path: Path, pixels) -> int:
    """How many fragments follow the Basic Offset Table of an encapsulated Pixel Data element
    pydicom found closed (its value, or deferred, read from the file one fragment at a time); an
    item that is not a fragment (a file with a part cut out) raises ValueError."""
    from pydicom.encaps import generate_fragments, parse_basic_offsets

    if pixels.value is not None:
        buffer = io.BytesIO(pixels.value)
        parse_basic_offsets(buffer)
        return sum(1 for _ in generate_fragments(buffer))
    with open(path, "rb") as file:
        file.seek(pixels.value_tell)
        parse_basic_offsets(file)
        return sum(1 for _ in generate_fragments(file))
