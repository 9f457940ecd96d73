"""The source image headers a DICOM SEG copies from: checked, and completed where DICOM allows.

A SEG belongs to the study of the images it segments: highdicom copies the patient and study
of the first source image into it, needs one study and frame of reference across all sources,
and references each image by its SOP Instance UID. Series from the field break this in ways a
reader does not mind (anonymised files without the Type 2 patient fields, one file of another
study, a date written 2020-01-01); left to highdicom they fail deep inside it, with a
traceback and after the segmentation has run. :func:`seg_source_datasets` finds them first
and names the file and the field.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeseg.errors import DataError, require

log = logging.getLogger(__name__)


# Type 1 in the General Study and Frame of Reference modules: a SEG without them is invalid,
# and every source must share them, as one SEG lies in one study and one patient space.
SHARED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")
# Type 2 in the Patient and General Study modules: present, possibly empty. A file that lacks
# one gets it empty, which is what the field holds when unknown; nothing is invented.
TYPE2_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
PATIENT_SEX_VALUES = ("M", "F", "O")
# PS3.3 C.12.1.1.2: the one set each defined term with code extensions names when it is the only value
SINGLE_SET_OF = {"ISO 2022 IR 6": "", "ISO 2022 IR 13": "ISO_IR 13", "ISO 2022 IR 166": "ISO_IR 166",
                 **{f"ISO 2022 IR {n}": f"ISO_IR {n}" for n in (100, 101, 109, 110, 126, 127, 138, 144, 148, 203)}}


def seg_source_datasets(refs, progress: bool = False) -> list:
    """The headers (no pixels) of the series ``refs`` describes, in stack order, ready for
    highdicom: the Specific Character Set in a form highdicom writes, and missing Type 2 patient /
    study fields made what DICOM means by them; DataError naming the file for anything a valid SEG cannot be made
    from (a missing or differing study or frame of reference UID, two files of one SOP Instance
    UID, a patient or study value in a form DICOM does not define). ``progress`` shows the
    headers being read on stderr."""
    sources = refs.load_datasets(progress)
    first_path, first = refs.files[0], sources[0]
    seen: dict[str, Path] = {}
    for path, dataset in zip(refs.files, sources):
        sop_uid = str(dataset.get("SOPInstanceUID", "") or "").strip()
        if not sop_uid:
            raise DataError(f"DICOM file {path} has no SOPInstanceUID; a DICOM SEG references each image by it")
        if sop_uid in seen:
            raise DataError(f"DICOM files {seen[sop_uid]} and {path} have the same SOPInstanceUID {sop_uid}; "
                            f"a DICOM SEG references each image by it, so the series must name each once")
        seen[sop_uid] = path
        for field in SHARED_UIDS:
            value, expected = _text(dataset, field), _text(first, field)
            if not value:
                raise DataError(f"DICOM file {path} has no {field}; a DICOM SEG needs the one of its source images")
            if value != expected:
                raise DataError(f"DICOM file {path} has {field} {value} but {first_path.name} has {expected}; "
                                f"a DICOM SEG covers images of one study and frame of reference")
        _character_set(dataset)
        for field in TYPE2_FIELDS:
            if field not in dataset:
                setattr(dataset, field, "")
    _check_copied_values(first, first_path)
    _complete_thickness(refs, sources)
    return sources


def _complete_thickness(refs, sources: list) -> None:
    """SliceThickness is Type 2 in a CT image (present, possibly empty) but Type 1C in the SEG's
    Pixel Measures, which highdicom copies from the sources: without it the SEG fails (absent) or is
    invalid (empty). Slices without it get the series' slice spacing, measured along the normal
    from their positions, and a warning says so; a single slice has no spacing and is refused."""
    missing = [path for path, dataset in zip(refs.files, sources) if not _text(dataset, "SliceThickness")]
    if not missing or refs.frame_numbers is not None:  # a multi-frame source's thickness is per frame
        return
    import numpy as np

    if len(sources) < 2:
        raise DataError(f"DICOM file {missing[0]} has no SliceThickness, and a series of one slice has no spacing "
                        f"to state instead; a DICOM SEG states the thickness of its source images")
    orientation = np.array([float(v) for v in sources[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    heights = [float(np.dot(normal, [float(v) for v in dataset.ImagePositionPatient])) for dataset in sources]
    spacing = float(np.median(np.abs(np.diff(heights))))
    for path, dataset in zip(refs.files, sources):
        if path in missing:
            dataset.SliceThickness = f"{spacing:.6g}"
    log.warning("series %s: %d of its %d slices have no SliceThickness; their DICOM SEG states the slice spacing, "
                "%.6g mm, as their thickness", refs.series_instance_uid, len(missing), len(sources), spacing)


def _character_set(dataset) -> None:
    """The dataset's Specific Character Set in the form highdicom takes (it copies the first
    source's into the SEG), meaning what DICOM means by the source's: an empty value, or
    'ISO_IR 6' as many files write it, is the default repertoire (the element goes); an empty first
    of several values is the default repertoire with code extensions, 'ISO 2022 IR 6' (Japanese
    and Korean series write '\\ISO 2022 IR 87'); a lone value with code extensions names one set
    ('ISO 2022 IR 100' is 'ISO_IR 100'); a set highdicom cannot write becomes UTF-8. Text values
    are decoded first, by what the file declared."""
    if "SpecificCharacterSet" not in dataset:
        return
    dataset.decode()
    raw = dataset.SpecificCharacterSet
    # imported here, not at module load: predict imports this module also for NPY or NIfTI output
    multi = require("pydicom.multival", "dicom", "DICOM SEG output").MultiValue
    values = [str(v or "").strip() for v in (raw if isinstance(raw, (list, tuple, multi)) else [raw])]
    if len(values) > 1:
        values[0] = values[0] or "ISO 2022 IR 6"
    elif values:
        values = [SINGLE_SET_OF.get(values[0], "" if values[0] == "ISO_IR 6" else values[0])]
    known = {v.value for v in require("highdicom", "dicom", "DICOM SEG output").SpecificCharacterSetValues}
    if not any(values):
        del dataset.SpecificCharacterSet
    elif not set(values) <= known:
        # a set highdicom does not write (Korean 'ISO 2022 IR 149'): the decoded text goes to the
        # SEG in UTF-8, which holds any of it, rather than no SEG at all
        dataset.SpecificCharacterSet = "ISO_IR 192"
    else:
        dataset.SpecificCharacterSet = values if len(values) > 1 else values[0]


def _text(dataset, field: str) -> str:
    return str(dataset.get(field, "") or "").strip()


def _check_copied_values(dataset, path: Path) -> None:
    """The coded patient and study values highdicom parses when it copies them into the SEG."""
    valuerep = require("pydicom.valuerep", "dicom", "DICOM SEG output")
    sex = _text(dataset, "PatientSex")
    if sex and sex not in PATIENT_SEX_VALUES:
        raise DataError(f"DICOM file {path}: field PatientSex is {sex!r}, expected one of M, F, O or empty "
                        f"(a DICOM SEG copies it)")
    for field, parse, form in (("PatientBirthDate", valuerep.DA, "YYYYMMDD"), ("StudyDate", valuerep.DA, "YYYYMMDD"),
                               ("StudyTime", valuerep.TM, "HHMMSS.FFFFFF")):
        text = _text(dataset, field)
        if not text:
            continue
        try:
            parse(text)
        except (ValueError, TypeError, OverflowError):
            raise DataError(f"DICOM file {path}: field {field} is {text!r}, not a DICOM {form} value "
                            f"(a DICOM SEG copies it)") from None
