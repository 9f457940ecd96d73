"""The UIDs a CT image must carry, and what makes one valid, checked in one place.

A DICOM SEG references its source images by their SOP Instance, Series, Study and Frame of
Reference UIDs; a SEG written from a series whose UIDs break PS3.5 9.1 (over 64 characters,
other than digits and dots, a component with a leading zero, missing or empty) carries those
invalid references on to the archive, which may refuse it or file it beside the wrong images.
The checks of a SEG's source headers (edgeseg.runtime.seg_sources: ``edgeseg predict --format
dicom-seg`` and the DICOM node's series alike) and the DICOM node's check of each image as it
arrives (edgeseg.serve.dicom_intake) both refuse such an image through :func:`check_image_uids`,
with the same line. Without pydicom: the node checks UIDs before anything names a file by them.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeseg.errors import DataError

# PS3.5 9.1: at most 64 characters
UID_MAX_LENGTH = 64
# The UIDs an image must carry for its series to be read and its SEG to reference it.
IMAGE_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
_COMPONENTS = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_DIGITS_AND_DOTS = re.compile(r"[0-9.]*")


def uid_problem(uid: str) -> str | None:
    """Why ``uid`` is not a valid DICOM UID (PS3.5 9.1), else None."""
    if not uid:
        return "is empty"
    if len(uid) > UID_MAX_LENGTH:
        return f"is {len(uid)} characters long; DICOM UIDs have at most {UID_MAX_LENGTH}"
    if not _DIGITS_AND_DOTS.fullmatch(uid):
        bad = next(c for c in uid if not (c.isascii() and (c.isdigit() or c == ".")))
        return f"holds {bad!r}; DICOM UIDs hold only digits and dots"
    if not _COMPONENTS.fullmatch(uid):
        return "has an empty component or one with a leading zero, which DICOM UIDs may not have"
    return None


def check_uid(uid: str, field: str, path: Path | str) -> str:
    """``uid`` if valid, else DataError naming the file, the field, the value and the rule."""
    problem = uid_problem(uid)
    if problem is not None:
        shown = f" {uid[:80]!r}" if uid and "characters long" not in problem else ""
        raise DataError(f"DICOM file {path}: {field}{shown} {problem}")
    return uid


def image_uid(dataset, field: str, path: Path | str) -> str:
    """The UID ``field`` of an image (Type 1 in a CT image, each of :data:`IMAGE_UIDS`), else
    DataError naming the file, the field and the rule: missing or empty, or not a valid UID."""
    value = str(dataset.get(field, "") or "").rstrip("\0 ")
    if not value:
        raise DataError(f"DICOM file {path} has no {field}; a DICOM SEG references its source images by it")
    return check_uid(value, field, path)


def check_image_uids(dataset, path: Path | str) -> None:
    """Refuse an image lacking one of :data:`IMAGE_UIDS`, or holding one that is not a valid UID."""
    for field in IMAGE_UIDS:
        image_uid(dataset, field, path)
