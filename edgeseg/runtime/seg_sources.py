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

from pathlib import Path

from edgeseg.errors import DataError, require

# Type 1 in the General Study and Frame of Reference modules: a SEG without them is invalid,
# and every source must share them, as one SEG lies in one study and one patient space.
SHARED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")
# Type 2 in the Patient and General Study modules: present, possibly empty. A file that lacks
# one gets it empty, which is what the field holds when unknown; nothing is invented.
TYPE2_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")
PATIENT_SEX_VALUES = ("M", "F", "O")


def seg_source_datasets(refs) -> list:
    """The headers (no pixels) of the series ``refs`` describes, in stack order, ready for
    highdicom: an empty Specific Character Set and missing Type 2 patient / study fields made
    what DICOM means by them; DataError naming the file for anything a valid SEG cannot be made
    from (a missing or differing study or frame of reference UID, two files of one SOP Instance
    UID, a patient or study value in a form DICOM does not define)."""
    sources = refs.load_datasets()
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
        # An empty Specific Character Set means the default repertoire; highdicom rejects ''.
        if "SpecificCharacterSet" in dataset and not dataset.SpecificCharacterSet:
            del dataset.SpecificCharacterSet
        for field in TYPE2_FIELDS:
            if field not in dataset:
                setattr(dataset, field, "")
    _check_copied_values(first, first_path)
    return sources


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
