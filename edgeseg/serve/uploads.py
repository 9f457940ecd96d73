"""``/v1/segment``: a whole file in, its mask out, with the format told by the file's own bytes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np

from edgeseg.errors import DataError, EdgesegError, require

OUTPUTS = {"npy": "application/octet-stream", "png": "image/png", "nifti": "application/gzip"}
SUFFIXES = {"jpeg": "jpg", "nifti": "nii.gz"}  # the upload's file name suffix where it is not the format's name


def sniff(body: bytes) -> str:
    """The upload's format from its magic bytes: dicom, nifti, png, jpeg or npy."""
    if body[:6] == b"\x93NUMPY":
        return "npy"
    if body[128:132] == b"DICM":
        return "dicom"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if body[:3] == b"\xff\xd8\xff":
        return "jpeg"
    head = body
    if body[:2] == b"\x1f\x8b":
        try:
            head = gzip.GzipFile(fileobj=io.BytesIO(body)).read(348)
        except (OSError, EOFError):
            raise DataError("upload is a gzip stream that cannot be decompressed") from None
    if len(head) >= 348 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    raise DataError("upload is not a DICOM file, NIfTI volume, PNG/JPG image or NPY array")


def segment_upload(segmenter, body: bytes, fmt: str, tmp: Path) -> tuple[bytes, str]:
    """Segment the uploaded file and return (mask bytes in ``fmt``, media type). An error names
    the upload (``upload.nii.gz: ...``), never the server's temporary folder."""
    try:
        return _segment_upload(segmenter, body, fmt, tmp)
    except EdgesegError as exc:
        exc.args = (str(exc).replace(f"{tmp}/", "").replace(str(tmp), "the upload"),)
        raise


def _segment_upload(segmenter, body: bytes, fmt: str, tmp: Path) -> tuple[bytes, str]:
    from edgeseg.runtime.readers import read_input
    from edgeseg.runtime.writers import write_nifti, write_npy

    if fmt not in OUTPUTS:
        raise DataError(f"format must be one of {sorted(OUTPUTS)}, got {fmt!r}")
    if not body:
        raise DataError("upload is empty")
    kind = sniff(body)
    if kind == "dicom":
        (tmp / "upload").mkdir()
        source = tmp / "upload" / "upload.dcm"
    else:
        source = tmp / f"upload.{SUFFIXES.get(kind, kind)}"
    if kind == "nifti" and body[:2] != b"\x1f\x8b":
        source = tmp / "upload.nii"
    source.write_bytes(body)
    volume, _ = read_input(source.parent if kind == "dicom" else source)
    labels = segmenter.predict_volume(volume)
    if fmt == "npy":
        out = write_npy(labels, tmp / "mask.npy")
    elif fmt == "png":
        if labels.shape[0] != 1:
            raise DataError(f"PNG output holds one slice; the upload has {labels.shape[0]} (ask for npy or nifti)")
        # the label map itself (pixel = class number), not an overlay: clients compute with it
        Image = require("PIL.Image", "io", "PNG output")
        out = tmp / "mask.png"
        Image.fromarray(np.ascontiguousarray(labels[0])).save(out, format="PNG")
    else:
        out = write_nifti(labels, volume, tmp / "mask.nii.gz")
    return Path(out).read_bytes(), OUTPUTS[fmt]


def labels_from_npy(payload: bytes) -> np.ndarray:
    """Decode an NPY response (for clients and tests)."""
    return np.load(io.BytesIO(payload), allow_pickle=False)
