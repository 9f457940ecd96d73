"""Whether an image file the DICOM node stored is whole: a node ended outright may leave one
cut short, and the node starting on its ``--work`` folder takes up only whole ones
(dicom_work.py)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES

# an encapsulated Pixel Data element's length, and the Sequence Delimitation Item that ends it
# (PS3.5 A.4), as written little endian
UNDEFINED_LENGTH = 0xFFFFFFFF
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def whole_image(path: Path) -> tuple[int, tuple[int, int], bool] | None:
    """(frames, (rows, columns), whether it is a multi-frame image) of an image file holding all
    its pixel data, else None. The pixel data is not read: uncompressed (as the node stores a
    slice), its element must claim the bytes its size needs and the file must hold them all;
    encapsulated (an Enhanced CT is stored as it came), the file must end with the sequence
    delimiter that closes it."""
    import pydicom

    try:
        with warnings.catch_warnings():  # a file cut short: pydicom warns, and the file is set aside
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, defer_size=4096)
        frames, rows, columns = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
        multiframe = frames > 1 or str(ds.get("SOPClassUID", "")) in ENHANCED_CT_CLASSES
        pixels = ds.get_item("PixelData", keep_deferred=True)
        if pixels is not None and pixels.length == UNDEFINED_LENGTH:
            with open(path, "rb") as file:
                file.seek(-len(SEQUENCE_DELIMITER), os.SEEK_END)
                return (frames, (rows, columns), multiframe) if file.read() == SEQUENCE_DELIMITER else None
        need = frames * rows * columns * ((int(ds.BitsAllocated) + 7) // 8)
        if pixels is None or pixels.length < need:
            return None
        tell = getattr(pixels, "value_tell", None)  # none where the value was read (under defer_size)
        if len(pixels.value) < need if tell is None else tell + pixels.length > path.stat().st_size:
            return None
        return frames, (rows, columns), multiframe
    except Exception:  # truncated, not DICOM, no pixel data: not a whole image
        return None
