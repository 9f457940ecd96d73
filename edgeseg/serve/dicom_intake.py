"""What the DICOM node accepts: the transfer syntaxes it negotiates for CT, and the checks an
incoming image passes before it is acknowledged.

An image acknowledged with Success is one the node has promised to segment: anything that would
only fail when the series is read (pixel data no installed decoder reads, an image that says it
is CT Image Storage but is not CT, one lacking a tag the series reader needs) is refused as it
arrives, so the peer sees the failure on the image that causes it instead of a series that
silently yields no SEG. The slice requirements are the reader's own (edgeseg.data.dicom_slice);
so are an Enhanced CT file's (edgeseg.data.dicom_multiframe: the file holds the whole series, its
frames checked as slices are).
"""

from __future__ import annotations

import logging
import re

from edgeseg.errors import DataError, require
from edgeseg.serve.dicom_peer_bound import NON_PIXEL_LIMIT

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
# Enhanced CT and Legacy Converted Enhanced CT Image Storage (edgeseg.data.dicom_slice's
# MULTI_FRAME_CT_CLASSES, named here without importing pydicom): a whole series in one file
ENHANCED_CT_CLASSES = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
# What the node segments; an image of any other class is answered "SOP class not supported"
CT_CLASSES = (CT_IMAGE_STORAGE, *ENHANCED_CT_CLASSES)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
STATUS_SUCCESS = 0x0000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_DATASET_MISMATCH = 0xA900
# PS3.4 B.2.3: C-STORE "Refused: Out of Resources" is A7xx; dcmtk prints it as OutOfResources.
STATUS_OUT_OF_RESOURCES = 0xA700
# "Error: Cannot understand", pynetdicom's answer to a handler that raised: the node's own failure
STATUS_STORE_FAILED = 0xC211
# Error Comment (0000,0902) is LO: at most 64 characters
ERROR_COMMENT_LENGTH = 64
# "DICOM file 1.2.3...", "series 1.2.3...:" in a reason: the UIDs would fill the Error Comment
UID_MENTION = re.compile(r"(DICOM file |series )?[0-9]+(\.[0-9]+){3,}:?\s*")
# UIDs DICOM itself registers (SOP classes, transfer syntaxes): no image's, and the sentence needs them
DICOM_ROOT = "1.2.840.10008."


def check_ae_title(title: str) -> str:
    """``title`` if it is a valid AE title (1..16 printable ASCII characters, not only spaces)."""
    if not isinstance(title, str) or not 1 <= len(title) <= 16 or not title.strip() \
            or not all(32 <= ord(c) < 127 and c != "\\" for c in title):
        raise DataError(f"AE title must be 1..16 printable ASCII characters without '\\', got {title!r}")
    return title


def decodable_transfer_syntaxes() -> list[str]:
    """The transfer syntaxes in which CT pixel data can be decoded with what is installed: the
    uncompressed ones, and each compressed one whose decoder has a working plugin (pydicom's
    decoders, one per syntax it knows, say both). JPEG Extended counts only with pylibjpeg's
    plugin: Pillow and GDCM decode its 8-bit form alone, and CT (12 to 16 bits stored) sent in it
    is always the 12-bit form; offered anyway, a peer able to send uncompressed instead would have
    its images accepted and then fail to decode."""
    require("pydicom", "io", "edgeseg listen")
    from pydicom.pixels import decoders
    from pydicom.pixels.decoders.base import Decoder

    from edgeseg.data.dicom_slice import JPEG_EXTENDED, TWELVE_BIT_JPEG_PLUGINS

    syntaxes = []
    for decoder in vars(decoders).values():
        if not isinstance(decoder, Decoder) or not decoder.is_available:
            continue
        if str(decoder.UID) == JPEG_EXTENDED and not set(decoder.available_plugins) & TWELVE_BIT_JPEG_PLUGINS:
            continue
        syntaxes.append(str(decoder.UID))
    return syntaxes


def add_ct_contexts(ae) -> None:
    """Offer each of :data:`CT_CLASSES` to peers in the transfer syntaxes decoded here (added to
    the uncompressed ones ``ae`` offers already), Deflated Explicit VR Little Endian excepted:
    pydicom inflates a deflated data set whole in memory before reading any element, so a few
    megabytes sent (within every bound on the wire) would take the node up by gigabytes. A peer
    offering it offers the uncompressed syntaxes too (dcmtk's ``storescu -xd``, pynetdicom's
    defaults) and sends in one of those."""
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in CT_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
        ae.remove_supported_context(sop_class, DEFLATED)


def incoming_uids(ds) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of an incoming image; DataError when either is missing
    or not a valid DICOM UID (they name the files the image is kept in), with the line the
    series reader gives (edgeseg.data.dicom_uids)."""
    from edgeseg.data.dicom_uids import image_uid

    label = received_label(ds)
    return image_uid(ds, "SeriesInstanceUID", label), image_uid(ds, "SOPInstanceUID", label)


def readable_series_uid(ds) -> str | None:
    """The SeriesInstanceUID of an incoming image where it is a valid UID (of an image refused
    for its SOP Instance UID, its series is still known), else None."""
    from edgeseg.data.dicom_uids import uid_problem

    series_uid = str(ds.get("SeriesInstanceUID", "") or "").rstrip("\0 ") if ds is not None else ""
    return series_uid if uid_problem(series_uid) is None else None


def received_label(ds) -> str:
    """What names an incoming image in a reason: its SOP Instance UID where that is valid, else
    a placeholder (a malformed one, "../x" or a line break, is never echoed into the log)."""
    from edgeseg.data.dicom_uids import uid_problem

    sop_uid = str(ds.get("SOPInstanceUID", "") or "").rstrip("\0 ")
    return sop_uid if uid_problem(sop_uid) is None else "(as received)"


def oversized_header(encoded_bytes: int, pixel_bytes: int) -> str | None:
    """Why an image whose elements other than its pixel data take more than the node accepts is
    refused (a private element padded to hundreds of megabytes), else None. ``encoded_bytes`` is
    the size of the data set as received, ``pixel_bytes`` that of its pixel data."""
    other = encoded_bytes - pixel_bytes
    if other > NON_PIXEL_LIMIT:
        return f"its elements other than pixel data take {other} bytes, over the {NON_PIXEL_LIMIT} the node accepts"
    return None


def failure_status(status: int, reason: str, sop_uid: str):
    """The C-STORE response for a refused image: ``status`` and, as its Error Comment, ``reason``
    without the instance, series and study UIDs it names (the peer knows which image it sent;
    a SOP class or transfer syntax named stays), cut to the 64 characters the element holds."""
    from pydicom import Dataset

    def dropped(mention: re.Match) -> str:
        text = mention.group(0)
        return text if not mention.group(1) and text.startswith(DICOM_ROOT) else ""

    comment = UID_MENTION.sub(dropped, reason)
    if sop_uid:
        comment = comment.replace(f"DICOM file {sop_uid}", "").replace(sop_uid, "")
    comment = comment.lstrip(":, ")
    response = Dataset()
    response.Status = status
    # LO: no backslash, no control character (an exception's text may hold line breaks)
    comment = " ".join(comment.replace("\\", "/").split())
    if len(comment) > ERROR_COMMENT_LENGTH:  # cut at a word: no number or UID left half
        cut = comment[:ERROR_COMMENT_LENGTH + 1]
        comment = cut[:cut.rfind(" ")] if " " in cut else cut[:ERROR_COMMENT_LENGTH]
    response.ErrorComment = comment.rstrip(" (,:;")
    return response


def answered_on_failure(handler):
    """``handler`` (the C-STORE handler) answering 0xC211 with an Error Comment where it fails
    unexpectedly (logged, with its traceback); pynetdicom's own 0xC211 carries none."""
    def store(event):
        try:
            return handler(event)
        except Exception as exc:
            logging.getLogger("edgeseg.listen").exception("storing an image failed: %s", exc)
            return failure_status(STATUS_STORE_FAILED, "the node failed storing it (see its log)", "")
    return store


def store_failure(exc: DataError, sop_uid: str):
    """The C-STORE response for an image refused as it is stored (HeldSeries): the status the
    error carries (``status``; else 0xA700, out of resources) and its ``comment`` for the peer."""
    return failure_status(getattr(exc, "status", STATUS_OUT_OF_RESOURCES), getattr(exc, "comment", str(exc)), sop_uid)


def refusal(ds, context_class: str, path=None) -> tuple[int, str] | None:
    """``(status, reason)`` when an incoming CT image (one of :data:`CT_CLASSES`) must be refused
    before it is stored, else None. ``ds`` carries its file meta (the transfer syntax it came in);
    ``context_class`` is the abstract syntax of the presentation context it came on, which must be
    its SOP class (pynetdicom does not check, and the node bounds a data set by its context);
    a slice's compressed pixel data that decodes is left decoded in ``ds`` (Explicit VR Little
    Endian, its SOP Instance UID unchanged), so that it is decoded once, here, and stored as the
    series read takes it. An Enhanced CT's frames are decoded one at a time and none is kept: the
    file is stored as it came. ``path``: the file ``ds`` was received to (dicom_received.py), its
    pixel data left there; an Enhanced CT's frames are then read from it one at a time too."""
    from pydicom.uid import UID

    from edgeseg.data.dicom_uids import check_image_uids

    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in CT_CLASSES:
        return STATUS_DATASET_MISMATCH, f"its SOP Class UID is {sop_class or 'missing'}, not a CT class"
    if sop_class != context_class:
        return STATUS_DATASET_MISMATCH, f"its SOP Class UID {sop_class} is not its context's ({context_class})"
    modality = str(ds.get("Modality", "")) or "missing"
    if modality != "CT":
        return STATUS_DATASET_MISMATCH, f"it is sent as a CT image but its modality is {modality}"
    label = str(ds.get("SOPInstanceUID", "?"))
    try:  # the UIDs its SEG would reference: checked as a SEG's sources are (edgeseg.runtime.seg_sources)
        check_image_uids(ds, label)
    except DataError as exc:
        return STATUS_DATASET_MISMATCH, str(exc)
    check_header, check_pixels = _enhanced_ct_checks() if sop_class in ENHANCED_CT_CLASSES else _slice_checks()
    try:  # what the series reader requires of the image, before any pixel is decoded
        checked = check_header(ds, label)
    except DataError as exc:
        return STATUS_DATASET_MISMATCH, str(exc)
    syntax = ds.file_meta.get("TransferSyntaxUID", "?")
    try:
        if sop_class in ENHANCED_CT_CLASSES:
            # a whole series: decoded frame by frame and each frame dropped once checked, never
            # held whole (1,000 RLE frames of 512x512 are 8 MB as sent, 500 MB decoded); the file
            # is stored as it came, and the series read decodes it frame by frame again
            # from the file it was received to, one frame read at a time (never deflated: no such
            # context is accepted, add_ct_contexts)
            check_pixels(ds if path is None else path, label, checked)
        elif UID(str(syntax)).is_compressed:
            # Decoded here, in full, and kept decoded: the series read then takes the pixels as
            # they are instead of decoding every image a second time (JPEG 2000 costs the most).
            ds.decompress(generate_instance_uid=False)
        else:
            ds.pixel_array  # noqa: B018 - checked here so that the series read cannot fail on it
    except DataError as exc:
        return STATUS_CANNOT_UNDERSTAND, str(exc)
    except Exception as exc:  # pydicom raises RuntimeError, ValueError, NotImplementedError, ...
        name = getattr(syntax, "name", str(syntax))
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2]) if first else type(exc).__name__
        return STATUS_CANNOT_UNDERSTAND, f"its pixel data ({name}) cannot be decoded here: {detail}"
    if sop_class not in ENHANCED_CT_CLASSES:
        try:
            check_pixels(ds, label, checked)
        except DataError as exc:
            return STATUS_CANNOT_UNDERSTAND, str(exc)
    return None


def _slice_checks():
    """(header check, pixel check) of a single-frame slice: the series reader's, slice by slice."""
    from edgeseg.data.dicom_slice import check_ct_slice, slice_pixels, slice_size

    return check_ct_slice, lambda ds, label, _: slice_pixels(ds, label, *slice_size(ds, label))


def _enhanced_ct_checks():
    """(header check, pixel check) of an Enhanced CT file: the reader's checks of the file
    (:class:`~edgeseg.data.dicom_multiframe.MultiFrameCT`), then of each frame's position,
    orientation, pixel spacing and rescale as of a slice's; its pixels, one grey-level image of
    Rows x Columns per frame."""
    from pathlib import Path

    import numpy as np

    from edgeseg.data.dicom_multiframe import MultiFrameCT
    from edgeseg.data.dicom_slice import pixel_spacing, rescale, slice_size, unit_cosines
    from edgeseg.data.dicom_values import dicom_numbers
    from edgeseg.data.dicom_volumes import split_volumes

    def check_header(ds, label: str):
        multi = MultiFrameCT(Path(label), ds)
        for name, view in multi.views:
            dicom_numbers(view, "ImagePositionPatient", name, 3)
            unit_cosines(np.asarray(dicom_numbers(view, "ImageOrientationPatient", name, 6)), name)
            pixel_spacing(view, name)
            rescale(view, name)
        split_volumes(multi.views, str(ds.get("SeriesInstanceUID", "")))  # frames at one position, nothing to tell them apart
        return multi

    def check_pixels(source, label: str, multi) -> None:
        from pydicom.pixels import iter_pixels

        frames, (rows, columns) = len(multi.views), slice_size(multi.dataset, label)
        decoded = 0
        for frame in iter_pixels(source):  # one frame at a time, each dropped before the next
            decoded += 1
            if decoded > frames or frame.shape != (rows, columns) or frame.dtype.kind not in "biuf":
                raise DataError(f"DICOM file {label}: its pixel data decodes to {frame.dtype} {list(frame.shape)} "
                                f"frames, expected {frames} grey-level frames of {rows}x{columns}")
        if decoded != frames:
            raise DataError(f"DICOM file {label}: its pixel data holds {decoded} frames, expected {frames}")

    return check_header, check_pixels
