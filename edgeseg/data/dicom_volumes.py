"""Several volumes in one DICOM series: the one rule that splits a series into them.

A CT series may hold more than one volume under one Series Instance UID: two reconstructions in
different orientations, several stacks (StackID), contrast phases or a 4-D acquisition whose
images repeat the same positions. ``edgeseg predict`` and the DICOM node both split a series by
:func:`split_volumes`, in this order (as dcm2niix splits a series into its volumes):

1. ImageOrientationPatient (cosines within :data:`ORIENTATION_TOLERANCE` of the first image's of
   an orientation): images of two orientations are never one volume.
2. Attributes that name a volume wherever they take several values: StackID, then
   TemporalPositionIdentifier (single-frame images), then TemporalPositionIndex (an Enhanced CT
   frame's FrameContentSequence).
3. Where images of a part so far still share a position along the slice normal: AcquisitionNumber,
   then ContentTime, the first that splits that part into as many volumes as images share a
   position, each holding each position once. (Otherwise they are left alone: a helical series
   whose slices differ in AcquisitionNumber or ContentTime but never in position is one volume.)

Images sharing a position with nothing above to tell them apart are refused in one line naming
the positions. Volumes are numbered from 1 in the order of their distinguishing values: the
orientations in the order of the lowest InstanceNumber of their images (the order the scanner
made them; then by cosines), then each attribute above, numbers compared as numbers, an image
lacking one coming first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.data.dicom_slice import unit_cosines
from edgeseg.data.dicom_values import dicom_numbers
from edgeseg.errors import DataError

# Cosines within this of the first image's of an orientation are that orientation (as the reader
# requires of one volume); an orientation is named by its first image's, to 4 decimals.
ORIENTATION_TOLERANCE = 1e-4
ORIENTATION_DECIMALS = 4
# Slices closer than this along the normal are at one position (as the series reader says).
SAME_POSITION_MM = 1e-3
# Attributes that split a series wherever they take several values, in order.
VOLUME_ATTRIBUTES = ("StackID", "TemporalPositionIdentifier", "TemporalPositionIndex")
# Attributes that split images sharing positions only, in order.
REPEAT_ATTRIBUTES = ("AcquisitionNumber", "ContentTime")


@dataclass(frozen=True)
class SeriesVolume:
    """One volume of a series: ``number`` (1-based), what tells it from the others (``label``:
    ``"StackID 2, TemporalPositionIdentifier 1"``; empty for a series of one volume) and its
    images (path, header) in the order they were given."""

    number: int
    label: str
    members: list

    def describe(self) -> str:
        """``2 (StackID 2, 40 images)``: how the volume is named in listings."""
        return f"{self.number} ({self.label + ', ' if self.label else ''}{len(self.members)} images)"


def _text(dataset, name: str) -> str:
    value = dataset.get(name)
    return "" if value is None else str(value).strip()


def _order(value: str):
    """Sort key of one attribute value: missing first, numbers as numbers, then text."""
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value) if value else (0, 0.0, "")


def _orientation(path: Path, dataset) -> tuple[float, ...]:
    cosines = np.asarray(dicom_numbers(dataset, "ImageOrientationPatient", path, 6))
    unit_cosines(cosines, path)  # skewed cosines are refused, not made a volume of their own
    return tuple(float(c) for c in cosines)


def _heights(members: list, cosines: tuple[float, ...]) -> np.ndarray:
    normal = np.cross(np.asarray(cosines[:3]), np.asarray(cosines[3:]))
    return np.asarray([float(np.dot(dicom_numbers(ds, "ImagePositionPatient", path, 3), normal))
                       for path, ds in members])


def _positions(heights: np.ndarray) -> np.ndarray:
    """The index of each image's position: heights closer than SAME_POSITION_MM share one."""
    order = np.argsort(heights, kind="stable")
    steps = np.concatenate([[0], np.diff(heights[order]) >= SAME_POSITION_MM]).cumsum()
    index = np.empty(len(heights), dtype=np.int64)
    index[order] = steps
    return index


def _split_by(part: list[int], members: list, name: str) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for k in part:
        groups.setdefault(_text(members[k][1], name), []).append(k)
    return groups


def _repeated(part: list[int], positions: np.ndarray) -> int:
    """How many images of ``part`` share its most shared position (1: none share one)."""
    return int(np.bincount(positions[part]).max()) if part else 0


def _split_repeats(part: list[int], members: list, positions: np.ndarray, heights: np.ndarray,
                   uid: str) -> list[tuple[tuple[str, str], list[int]]]:
    """``part`` as it is where no two of its images share a position; else split by the first of
    REPEAT_ATTRIBUTES that makes as many volumes as images share a position, each with each of its
    positions once; else refused."""
    shared = _repeated(part, positions)
    if shared <= 1:
        return [(("", ""), part)]
    for name in REPEAT_ATTRIBUTES:
        groups = _split_by(part, members, name)
        if len(groups) == shared and all(_repeated(g, positions) == 1 for g in groups.values()):
            return [((name, value), g) for value, g in groups.items()]
    counts = np.bincount(positions[part])
    repeated = [int(p) for p in np.flatnonzero(counts > 1)]
    at = [float(heights[next(k for k in part if positions[k] == p)]) for p in repeated]
    first = [members[k][0].name for k in part if positions[k] == repeated[0]]
    shown = ", ".join(f"{h:.3f}" for h in at[:6]) + (", ..." if len(at) > 6 else "")
    raise DataError(f"series {uid}: {first[0]} and {first[1]} lie at the same slice position {at[0]:.3f} mm "
                    f"({len(at)} position(s) held {shared} times at most: {shown} mm) and nothing tells them apart "
                    f"({', '.join(VOLUME_ATTRIBUTES + REPEAT_ATTRIBUTES)}); the series mixes acquisitions")


def _labelled(name: str, value: str) -> str:
    return f"{name} {value or '(none)'}"


def _split_orientation(part: list[int], members: list, cosines: tuple[float, ...], uid: str) -> list:
    """(sort key, label, images) of each volume of ``part``, the images of one orientation: split by
    each of VOLUME_ATTRIBUTES taking several values, then where positions repeat (_split_repeats)."""
    numbers = [o[1] for o in (_order(_text(members[k][1], "InstanceNumber")) for k in part) if o[0] == 1]
    first = (0, min(numbers)) if numbers else (1, 0.0)  # orientations without InstanceNumber last
    heights, positions = np.zeros(len(members)), np.zeros(len(members), dtype=np.int64)
    heights[part] = _heights([members[k] for k in part], cosines)
    positions[part] = _positions(heights[part])
    parts: list[tuple[tuple, list[str], list[int]]] = [((first, cosines), [], part)]
    for name in VOLUME_ATTRIBUTES:
        split = []
        for key, label, group in parts:
            groups = _split_by(group, members, name)
            if len(groups) == 1:
                split.append((key + (_order(""),), label, group))
            else:
                split += [(key + (_order(value),), label + [_labelled(name, value)], g) for value, g in groups.items()]
        parts = split
    return [(key + (name, _order(value)), ", ".join(label + ([_labelled(name, value)] if name else [])), g)
            for key, label, group in parts
            for (name, value), g in _split_repeats(group, members, positions, heights, uid)]


def split_volumes(members: list, uid: str) -> list[SeriesVolume]:
    """The volumes of a series' images ``members`` ((path, header) pairs: single-frame slices, or
    the frame views of an Enhanced CT), by the rule in this module's docstring; a series of one
    volume gives one, labelled ``""``. DataError, in one line naming the positions, where images
    share a position and nothing tells them apart."""
    by_orientation: dict[tuple[float, ...], list[int]] = {}
    for k, (path, dataset) in enumerate(members):
        cosines = _orientation(path, dataset)
        # one orientation within the reader's tolerance, whichever side of a rounding step it lies
        same = next((key for key in by_orientation if np.allclose(key, cosines, atol=ORIENTATION_TOLERANCE)), cosines)
        by_orientation.setdefault(same, []).append(k)
    found = [volume for cosines, part in by_orientation.items()
             for volume in _split_orientation(part, members, cosines, uid)]
    if len(by_orientation) > 1:
        found = [(key, ", ".join(filter(None, [f"ImageOrientationPatient {[round(c, ORIENTATION_DECIMALS) + 0.0 for c in key[1]]}", label])), g)
                 for key, label, g in found]
    found.sort(key=lambda item: item[0])
    return [SeriesVolume(n, label if len(found) > 1 else "", [members[k] for k in sorted(g)])
            for n, (_, label, g) in enumerate(found, start=1)]


def pick_volume(volumes: list[SeriesVolume], number: int | None, where: str) -> SeriesVolume:
    """Volume ``number`` of ``volumes`` (the series ``where``); the only one where ``number`` is
    None; else DataError in one line listing them."""
    listing = "; ".join(v.describe() for v in volumes)
    if number is None:
        if len(volumes) == 1:
            return volumes[0]
        raise DataError(f"{where} holds {len(volumes)} volumes: {listing}; pick one with --volume K")
    if not 1 <= number <= len(volumes):
        raise DataError(f"--volume {number}: {where} holds {len(volumes)} volume{'s' if len(volumes) > 1 else ''}"
                        f" ({listing})")
    return volumes[number - 1]
