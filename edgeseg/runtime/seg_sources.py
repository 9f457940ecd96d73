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

import copy
import logging
from pathlib import Path

from edgeseg.data.dicom_uids import check_image_uids
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
# The functional groups highdicom copies from a multi-frame source's shared groups into the SEG's, for all
# its frames; a source may keep them per frame, equal or not.
SHARED_IN_SEG = ("PixelMeasuresSequence", "PlaneOrientationSequence")
# The values of those groups that may differ between frames: the SEG states them per frame.
PER_FRAME_IN_SEG = {"PixelMeasuresSequence": ("SliceThickness", "SpacingBetweenSlices")}
# Two frames' values closer than this are one value written twice (as the SEG reader compares grids).
SAME_VALUE_TOLERANCE = 1e-4
SINGLE_SET_OF = {"ISO 2022 IR 6": "", "ISO 2022 IR 13": "ISO_IR 13", "ISO 2022 IR 166": "ISO_IR 166",
                 **{f"ISO 2022 IR {n}": f"ISO_IR {n}" for n in (100, 101, 109, 110, 126, 127, 138, 144, 148, 203)}}


def seg_source_datasets(refs, progress: bool = False) -> list:
    """The headers (no pixels) of the series ``refs`` describes, in stack order, ready for
    highdicom: the Specific Character Set in a form highdicom writes, and missing Type 2 patient /
    study fields made what DICOM means by them; DataError naming the file for anything a valid SEG cannot be made
    from (a SOP Instance, series, study or frame of reference UID missing or not a valid UID
    (:func:`~edgeseg.data.dicom_uids.check_image_uids`), a differing study or frame of reference
    UID, two files of one SOP Instance UID, a patient or study value in a form DICOM does not define). ``progress`` shows the
    headers being read on stderr."""
    sources = refs.load_datasets(progress)
    if refs.frame_numbers is not None:  # the reader's own header is left as it read it
        sources = [_volume_frames(refs, _shared_groups(refs.files[0], copy.deepcopy(sources[0])))]
    first_path, first = refs.files[0], sources[0]
    seen: dict[str, Path] = {}
    for path, dataset in zip(refs.files, sources):
        check_image_uids(dataset, path)  # the DICOM node's check of each image as it arrives, too
        sop_uid = str(dataset.SOPInstanceUID).rstrip("\0 ")
        if sop_uid in seen:
            raise DataError(f"DICOM files {seen[sop_uid]} and {path} have the same SOPInstanceUID {sop_uid}; "
                            f"a DICOM SEG references each image by it, so the series must name each once")
        seen[sop_uid] = path
        for field in SHARED_UIDS:
            value, expected = _text(dataset, field), _text(first, field)
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


def _volume_frames(refs, dataset):
    """``dataset`` (a multi-frame source, copied) with the frames of the volume ``refs`` alone, in
    ascending frame number: a file holding several volumes (edgeseg.data.dicom_volumes) repeats
    positions, which highdicom refuses. :func:`renumber_source_frames` gives the SEG made of it
    the file's own frame numbers back."""
    frames = dataset.PerFrameFunctionalGroupsSequence
    if len(refs.frame_numbers) < len(frames):
        dataset.PerFrameFunctionalGroupsSequence = [frames[n - 1] for n in sorted(refs.frame_numbers)]
        dataset.NumberOfFrames = len(refs.frame_numbers)
    return dataset


def renumber_source_frames(seg, refs) -> None:
    """Make the frames of ``seg`` (a highdicom Segmentation of :func:`_volume_frames`' copy,
    changed in place) reference the source file's own frame numbers."""
    if refs.frame_numbers is None:
        return
    numbers = sorted(refs.frame_numbers)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if source.get("ReferencedFrameNumber") not in (None, ""):
                    source.ReferencedFrameNumber = numbers[int(source.ReferencedFrameNumber) - 1]


def _complete_thickness(refs, sources: list) -> None:
    """SliceThickness is Type 2 in a CT image (present, possibly empty) but Type 1C in the SEG's Pixel
    Measures. Slices without it get the thickness the others state where they all state one, or
    else the series' slice spacing, measured along the normal from their positions, and a warning
    says so; a single slice has no spacing and is refused. Slices may differ in thickness: the SEG
    states each frame's source thickness (:mod:`edgeseg.runtime.seg_measures`)."""
    if refs.frame_numbers is not None:
        _complete_frame_thickness(refs, sources[0])
        return
    stated = [dataset.SliceThickness for dataset in sources if _text(dataset, "SliceThickness")]
    missing = [path for path, dataset in zip(refs.files, sources) if not _text(dataset, "SliceThickness")]
    if not missing:
        return
    if stated and all(same_value(stated[0], value) for value in stated):
        value, said = str(stated[0]), f"that of the others, {stated[0]} mm"
    elif len(sources) < 2:
        raise DataError(f"DICOM file {missing[0]} has no SliceThickness, and a series of one slice has no spacing "
                        f"to state instead; a DICOM SEG states the thickness of its source images")
    else:
        spacing = _spacing(sources[0].ImageOrientationPatient, [dataset.ImagePositionPatient for dataset in sources])
        value, said = f"{spacing:.6g}", f"the slice spacing, {spacing:.6g} mm"
    for path, dataset in zip(refs.files, sources):
        if path in missing:
            dataset.SliceThickness = value
    log.warning("series %s: %d of its %d slices have no SliceThickness; their DICOM SEG states %s, as their "
                "thickness", refs.series_instance_uid, len(missing), len(sources), said)


def _complete_frame_thickness(refs, dataset) -> None:
    """:func:`_complete_thickness` for a multi-frame source whose Pixel Measures (shared, see
    :func:`_shared_groups`) lack SliceThickness: it gets the spacing of the frames' positions."""
    measures = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if _text(measures, "SliceThickness"):
        return
    frames = dataset.PerFrameFunctionalGroupsSequence  # this volume's (_volume_frames)
    if len(frames) < 2:
        raise DataError(f"DICOM file {refs.files[0]} has no SliceThickness, and its one frame has no spacing to "
                        f"state instead; a DICOM SEG states the thickness of its source images")
    orientation = dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    spacing = _spacing(orientation, [frame.PlanePositionSequence[0].ImagePositionPatient for frame in frames])
    measures.SliceThickness = f"{spacing:.6g}"
    log.warning("series %s: its %d frames have no SliceThickness; their DICOM SEG states the frame spacing, "
                "%.6g mm, as their thickness", refs.series_instance_uid, len(frames), spacing)


def _spacing(orientation, positions: list) -> float:
    """The median gap between neighbouring positions along the slice normal of ``orientation``."""
    import numpy as np

    cosines = np.array([float(v) for v in orientation])
    normal = np.cross(cosines[:3], cosines[3:])
    heights = sorted(float(np.dot(normal, [float(v) for v in position])) for position in positions)
    return float(np.median(np.diff(heights)))


def _shared_groups(path: Path, dataset):
    """``dataset`` (a multi-frame source, copied) with its groups of :data:`SHARED_IN_SEG` shared:
    highdicom reads them from the shared functional groups only, while a source may keep them per
    frame. A group whose item is the same for every frame moves there; one whose frames differ is
    refused, but for the values of :data:`PER_FRAME_IN_SEG`: Pixel Measures whose frames differ in
    thickness alone get the first frame's item shared, for highdicom, and keep their own per frame,
    from which the SEG states each frame's (:mod:`edgeseg.runtime.seg_measures`; this copy is
    never written). The reader has checked each frame has the group's one item in one place."""
    Dataset = require("pydicom.dataset", "dicom", "DICOM SEG output").Dataset
    Sequence = require("pydicom.sequence", "dicom", "DICOM SEG output").Sequence

    if not dataset.get("SharedFunctionalGroupsSequence"):
        dataset.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    shared, frames = dataset.SharedFunctionalGroupsSequence[0], dataset.PerFrameFunctionalGroupsSequence
    for group in SHARED_IN_SEG:
        if group in shared:
            continue
        items = [frame[group].value[0] for frame in frames]
        if group == "PixelMeasuresSequence":
            _fill_frame_thickness(path, dataset, items)
        per_frame = PER_FRAME_IN_SEG.get(group, ())
        for number, item in enumerate(items[1:], start=2):
            name = next((name for name in sorted(set(items[0].dir()) | set(item.dir()))
                         if not same_value(items[0].get(name), item.get(name))), None)
            if name is not None and name not in per_frame:
                raise DataError(f"DICOM file {path}: frames 1 and {number} have {name} {_shown(items[0], name)} and "
                                f"{_shown(item, name)} ({group}); a DICOM SEG states one for all the frames it covers")
        varies = any(not same_value(items[0].get(name), item.get(name)) for item in items for name in per_frame)
        setattr(shared, group, Sequence([copy.deepcopy(items[0])]))
        if not varies:
            for frame in frames:
                delattr(frame, group)
    return dataset


def _fill_frame_thickness(path: Path, dataset, items: list) -> None:
    """Per-frame Pixel Measures of which some lack SliceThickness get the value the others state
    where they all state one, else the spacing of the frames' positions, as single-frame slices
    do (:func:`_complete_thickness`)."""
    stated = [item.SliceThickness for item in items if _text(item, "SliceThickness")]
    missing = [item for item in items if not _text(item, "SliceThickness")]
    if not stated or not missing:
        return
    if all(same_value(stated[0], value) for value in stated):
        value, said = str(stated[0]), f"that of the others, {stated[0]} mm"
    else:
        first = dataset.PerFrameFunctionalGroupsSequence[0]
        groups = first if "PlaneOrientationSequence" in first else dataset.SharedFunctionalGroupsSequence[0]
        spacing = _spacing(groups.PlaneOrientationSequence[0].ImageOrientationPatient,
                           [frame.PlanePositionSequence[0].ImagePositionPatient
                            for frame in dataset.PerFrameFunctionalGroupsSequence])
        value, said = f"{spacing:.6g}", f"the frame spacing, {spacing:.6g} mm"
    for item in missing:
        item.SliceThickness = value
    log.warning("%s: %d of its %d frames have no SliceThickness; their DICOM SEG states %s, as their thickness",
                path, len(missing), len(items), said)


def same_value(a, b) -> bool:
    """Two values of one attribute alike: numbers within SAME_VALUE_TOLERANCE, others as text."""
    if a is None or b is None:
        return a is b
    try:
        x, y = [float(v) for v in _listed(a)], [float(v) for v in _listed(b)]
    except (TypeError, ValueError):
        return str(a) == str(b)
    return len(x) == len(y) and all(abs(u - v) <= SAME_VALUE_TOLERANCE for u, v in zip(x, y))


def _listed(value) -> list:
    return list(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [value]


def _shown(item, name: str) -> str:
    value = item.get(name)
    return "(none)" if value is None else str(_listed(value) if len(_listed(value)) > 1 else value)


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
