"""The note beside the images of a series kept for late images in a ``--work`` folder
(``.seg.json``): the SEGs those images were segmented into, one per volume of the series
(:class:`~edgeseg.serve.dicom_segmented.SegReference` fields, the SOP Instance UIDs of each
volume's images among them), and the wall-clock time they are kept to. A node taking the folder
up after a restart reads it to make SEGs that replace those, volume by volume.

Written as the images are (flushed under a staged name, renamed, the rename flushed) and read
back strictly: a note that is not one (not JSON, a field missing or of the wrong type) is passed
over in one warning. A note of one SEG written before the SEGs of several volumes were noted
(its fields at the top level, no ``segs``) is read as a series of one SEG whose images are not
known."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import stat
from dataclasses import MISSING, asdict
from dataclasses import fields as dataclass_fields
from pathlib import Path

from edgeseg.serve.dicom_work import REFERENCE_NAME, sync_file, sync_folder

log = logging.getLogger("edgeseg.listen")


def save_reference(folder: Path, segs, until: float) -> None:
    """Write beside a series' images the SEGs they were segmented into (SegReferences, or their
    fields; one alone is taken as a list of one) and the wall-clock time they are kept to, so that
    a node taking the folder up again can replace those SEGs. Flushed to disk under a staged name,
    renamed, and the rename flushed (a power cut would otherwise leave an empty or missing note
    beside images that were kept, and the next node would make SEGs of their own)."""
    from edgeseg.atomic import atomic_path

    if isinstance(segs, dict) or not isinstance(segs, (list, tuple)):
        segs = [segs]
    notes = [dict(seg) if isinstance(seg, dict) else asdict(seg) for seg in segs]
    for note in notes:
        note["images"] = list(note.get("images", ()))
    with atomic_path(folder / REFERENCE_NAME) as tmp:
        tmp.write_text(json.dumps({"segs": notes, "until": until}))
        sync_file(tmp)
    sync_folder(folder)


def _fields() -> dict[str, tuple[type, bool]]:
    """What a SEG's note holds: the fields of dicom_segmented.SegReference, each with its type and
    whether it must be there (a field with a default may be missing)."""
    from edgeseg.serve.dicom_segmented import SegReference  # here: that module imports this one

    kinds = {"str": str, "int": int, "float": float}
    return {f.name: (kinds.get(f.type, list) if isinstance(f.type, str) else f.type,
                     f.default is MISSING and f.default_factory is MISSING) for f in dataclass_fields(SegReference)}


def _fits(value, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind is list:  # the images: SOP Instance UIDs
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, kind)


def _seg_note(data, fields: dict[str, tuple[type, bool]]) -> dict | None:
    if not isinstance(data, dict) or not all(_fits(data[key], kind) if key in data else not required
                                             for key, (kind, required) in fields.items()):
        return None
    return {key: data[key] for key in fields if key in data}


def read_reference(folder: Path) -> dict | None:
    """``{"segs": [fields of each SEG], "until": time}`` of ``folder``'s .seg.json (others passed
    over); None, with one warning, where it is not a regular file holding, for each SEG, each field
    it must, of its type, and ``until``."""
    path = folder / REFERENCE_NAME
    if not os.path.lexists(path):
        return None
    data, fields = None, _fields()
    with contextlib.suppress(OSError):
        if stat.S_ISREG(path.lstat().st_mode):
            with contextlib.suppress(ValueError):
                data = json.loads(path.read_text())
    if isinstance(data, dict) and _fits(data.get("until"), float):
        segs = data["segs"] if "segs" in data else [data]  # a note of one SEG, written before volumes were noted
        notes = [_seg_note(seg, fields) for seg in segs] if isinstance(segs, list) else [None]
        if notes and all(note is not None for note in notes):
            return {"segs": notes, "until": data["until"]}
    need = ", ".join(key for key, (_, required) in fields.items() if required)
    log.warning("%s is not a note of the SEG its images were segmented into (it must be a file holding %s and until, "
                "for each SEG); the series is taken up without it", path, need)
    return None


def newest(notes) -> dict | None:
    """The note (of :func:`read_reference`) of the highest instance number among ``notes`` (None
    for a part without one): the SEGs made last of the series."""
    return max((note for note in notes if note is not None),
               key=lambda note: max(seg["instance_number"] for seg in note["segs"]), default=None)
