"""Pixel Measures of a DICOM SEG frame by frame: the thickness of the image each frame is drawn on.

highdicom copies the first source image's Pixel Measures (Pixel Spacing, Slice Thickness,
Spacing Between Slices) into the SEG's shared functional groups, for every frame. A series whose
slices (or an Enhanced CT whose frames) differ in thickness would then state the first one's for
all. The Multi-frame Functional Groups module (PS3.3 C.7.6.16) lets a SEG keep Pixel Measures
either shared or in each frame's item of the Per-frame Functional Groups, never both:
:func:`state_frame_measures` keeps them shared where every source states one thickness and moves
them into each frame otherwise, with the thickness of the source image (or frame) the SEG frame
references in its Derivation Image Sequence. Spacing Between Slices, copied from the first source
or measured by highdicom, is set to the spacing of the SEG frames' positions along the normal of
their orientation (the distance between adjacent parallel slices, center to center, as PS3.3
defines it: for a gantry-tilted series less than the table increment, by the cosine of the tilt)
where that spacing is constant, and removed where it is not (it is Type 3).
"""

from __future__ import annotations

import copy

import numpy as np

from edgeseg.errors import DataError, require
from edgeseg.runtime.seg_sources import SAME_VALUE_TOLERANCE
# Gaps between frame positions closer than this (mm) are one spacing: positions are decimal
# strings of at most 16 characters, re-formatted by each writer.
SAME_SPACING_MM = 1e-3


def source_thicknesses(sources: list) -> dict:
    """(SOP Instance UID, frame number or None) -> SliceThickness of each source image (frame),
    from the headers :func:`~edgeseg.runtime.seg_sources.seg_source_datasets` gave: a multi-frame
    source's per-frame Pixel Measures where it keeps them there, else its shared ones."""
    if len(sources) == 1 and "PerFrameFunctionalGroupsSequence" in sources[0]:
        dataset = sources[0]
        (shared,) = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        frames = dataset.PerFrameFunctionalGroupsSequence
        return {(str(dataset.SOPInstanceUID), number): str(
                    (frame.PixelMeasuresSequence[0] if "PixelMeasuresSequence" in frame else shared).SliceThickness)
                for number, frame in enumerate(frames, start=1)}
    return {(str(dataset.SOPInstanceUID), None): str(dataset.SliceThickness) for dataset in sources}


def _source_of(frame, index: int) -> tuple[str, int | None]:
    """The (SOP Instance UID, frame number or None) SEG frame ``index`` (0-based) is drawn on."""
    try:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
    except (AttributeError, IndexError):
        raise DataError(f"DICOM SEG frame {index + 1} references no source image; its thickness cannot be "
                        f"stated") from None
    number = source.get("ReferencedFrameNumber")
    return str(source.ReferencedSOPInstanceUID), None if number in (None, "") else int(number)


def state_frame_measures(seg, sources: list) -> None:
    """Make the Pixel Measures of ``seg`` (a highdicom Segmentation, changed in place) state each
    frame's source thickness: shared where all are one value, per frame otherwise; and its
    Spacing Between Slices the constant spacing of its frames' positions, or none."""
    Sequence = require("pydicom.sequence", "dicom", "DICOM SEG output").Sequence

    shared = seg.SharedFunctionalGroupsSequence[0]
    (measures,) = shared.PixelMeasuresSequence
    _state_spacing(seg, measures)
    thickness_of = source_thicknesses(sources)
    frames = seg.PerFrameFunctionalGroupsSequence
    values = []
    for index, frame in enumerate(frames):
        key = _source_of(frame, index)
        if key not in thickness_of:
            raise DataError(f"DICOM SEG frame {index + 1} references {key[0]}"
                            f"{'' if key[1] is None else f' frame {key[1]}'}, none of its source images")
        values.append(thickness_of[key])
    if all(abs(float(value) - float(values[0])) <= SAME_VALUE_TOLERANCE for value in values):
        if values:
            measures.SliceThickness = values[0]
        return
    del shared.PixelMeasuresSequence
    for frame, value in zip(frames, values):
        item = copy.deepcopy(measures)
        item.SliceThickness = value
        frame.PixelMeasuresSequence = Sequence([item])


def _heights(seg) -> np.ndarray:
    """The SEG frames' distinct positions (mm) along the normal of their orientation, sorted."""
    (orientation,) = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    cosines = np.asarray([float(v) for v in orientation.ImageOrientationPatient])
    normal = np.cross(cosines[:3], cosines[3:])
    heights = np.sort([float(np.dot(normal, [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]))
                       for frame in seg.PerFrameFunctionalGroupsSequence])
    return heights[np.concatenate([[True], np.diff(heights) > SAME_SPACING_MM])] if heights.size else heights


def frame_spacing(seg) -> float | None:
    """The spacing (mm) of the SEG frames' distinct positions, when it is constant; None for one
    position or gaps that differ."""
    gaps = np.diff(_heights(seg))
    if gaps.size == 0 or gaps.max() - gaps.min() > SAME_SPACING_MM:
        return None
    return float(np.median(gaps))


def _state_spacing(seg, measures) -> None:
    """Spacing Between Slices as :func:`frame_spacing` measures it; kept for a SEG of one position
    (nothing to measure), removed where the gaps differ."""
    if "SpacingBetweenSlices" not in measures or len(_heights(seg)) < 2:
        return
    spacing = frame_spacing(seg)
    if spacing is None:
        del measures.SpacingBetweenSlices
    elif abs(float(measures.SpacingBetweenSlices) - spacing) > SAME_SPACING_MM:
        measures.SpacingBetweenSlices = f"{spacing:.6g}"
