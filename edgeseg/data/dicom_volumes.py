"""Several volumes in one DICOM series: the one rule that splits a series into them.

A CT series may hold more than one volume under one Series Instance UID: two reconstructions in
different orientations, several stacks (StackID), contrast phases or a 4-D acquisition whose
images repeat the same positions. ``edgeseg predict`` and the DICOM node both split a series by
:func:`split_volumes`, in this order (as dcm2niix splits a series into its volumes):

0. Localizers (scout views: ImageType holding LOCALIZER) are left out, with one warning; a series
   of localizers alone is refused.
1. ImageOrientationPatient: images whose cosines lie within :data:`ORIENTATION_TOLERANCE` of one
   another, directly or through images in between, are one orientation; images of two
   orientations are never one volume. An orientation whose cosines spread further than the
   tolerance (a drift from image to image) is refused in one line: no volume has one orientation.
2. Where images of an orientation share a position along the slice normal, they are told apart by
   the first of StackID, TemporalPositionIdentifier (single-frame images), TemporalPositionIndex
   (an Enhanced CT frame's FrameContentSequence) taking several values among the images at each
   shared position, each value a volume (split again the same way where its images still share
   positions) where each value holds several positions or there are no more values than images
   share a position (a value per slice groups no volume: it is passed over); else by
   AcquisitionNumber, then ContentTime, the first that splits them into as many volumes as images
   share a position, each holding each position once. Images that never share a position are one
   volume, whatever these attributes hold (a helical series whose slices differ in AcquisitionNumber
   or ContentTime, a StackID or temporal position on some or each slice).

Images sharing a position with nothing above to tell them apart are refused in one line naming
the positions. The split depends on the images alone, not on their file names or the order they
came in. Volumes are numbered from 1 in the order of their distinguishing values: the
orientations in the order of the lowest InstanceNumber of their images (the order the scanner
made them; then by cosines), then each attribute above, numbers compared as numbers (then as
written: ``120000`` before ``120000.000``), an image lacking one coming first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseg.data.dicom_slice import unit_cosines
from edgeseg.data.dicom_values import dicom_numbers
from edgeseg.errors import DataError

log = logging.getLogger(__name__)

# Cosines within this of one another (each of the six) are one orientation, as the reader requires
# of one volume; an orientation is named by its first image's cosines, to 4 decimals.
ORIENTATION_TOLERANCE = 1e-4
ORIENTATION_DECIMALS = 4
# Slices closer than this along the normal are at one position (as the series reader says).
SAME_POSITION_MM = 1e-3
# Attributes that split images sharing positions wherever they take several values among them, in order.
VOLUME_ATTRIBUTES = ("StackID", "TemporalPositionIdentifier", "TemporalPositionIndex")
# Attributes that split images sharing positions into one volume per shared image, in order.
REPEAT_ATTRIBUTES = ("AcquisitionNumber", "ContentTime")
SPLIT_ATTRIBUTES = VOLUME_ATTRIBUTES + REPEAT_ATTRIBUTES
# The ImageType value of a scout view: no volume of the series (as dcm2niix leaves them out).
LOCALIZER = "LOCALIZER"
# What a series holding several volumes is told where one is read: predict's option, else what will do.
PICK_WITH_OPTION = "pick one with --volume K"
PICK_BY_FOLDER = ("this reads one volume: give a folder holding one volume's images alone "
                  "(edgeseg predict --volume K segments one; edgeseg data info SOURCE lists them)")


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
    """Sort key of one attribute value: missing first, numbers as numbers (then as written), then text."""
    try:
        number = float(value)
    except ValueError:
        return (2, 0.0, value) if value else (0, 0.0, "")
    return (1, number, value) if math.isfinite(number) else (2, 0.0, value)


def is_localizer(dataset) -> bool:
    """Whether the image is a scout view (its ImageType holds LOCALIZER)."""
    value = dataset.get("ImageType")
    values = [] if value is None else [value] if isinstance(value, str) else list(value)
    return any(str(v).strip().upper() == LOCALIZER for v in values)


def _without_localizers(members: list, uid: str) -> list:
    scouts = [path.name for path, dataset in members if is_localizer(dataset)]
    if not scouts:
        return members
    shown = ", ".join(scouts[:3]) + (", ..." if len(scouts) > 3 else "")
    if len(scouts) == len(members):
        raise DataError(f"series {uid} holds localizers alone ({len(scouts)} image(s) of ImageType {LOCALIZER}: "
                        f"{shown}); a scout view is no volume to segment")
    log.warning("series %s: %d localizer image(s) (ImageType %s) left out of its volumes: %s", uid, len(scouts),
                LOCALIZER, shown)
    return [(path, dataset) for path, dataset in members if not is_localizer(dataset)]


def _stable_order(members: list) -> list[int]:
    """The images by InstanceNumber, then SOP Instance UID: an order their file names do not change."""
    return sorted(range(len(members)), key=lambda k: (_order(_text(members[k][1], "InstanceNumber")),
                                                      _text(members[k][1], "SOPInstanceUID"), k))


def _orientation(path: Path, dataset) -> tuple[float, ...]:
    cosines = np.asarray(dicom_numbers(dataset, "ImageOrientationPatient", path, 6))
    unit_cosines(cosines, path)  # skewed cosines are refused, not made a volume of their own
    return tuple(float(c) for c in cosines)


def _by_orientation(members: list, order: list[int], uid: str) -> list[tuple[tuple[float, ...], list[int]]]:
    """(cosines of the first image, images in ``order``) of each orientation: images within
    ORIENTATION_TOLERANCE of one another, directly or through others; DataError where those of one
    orientation spread further."""
    cosines = np.asarray([_orientation(*members[k]) for k in order])
    distinct, which = np.unique(cosines, axis=0, return_inverse=True)
    which = which.reshape(-1)
    group = np.full(len(distinct), -1)
    for seed in range(len(distinct)):
        if group[seed] >= 0:
            continue
        group[seed], frontier = seed, [seed]
        while frontier:
            near = np.abs(distinct - distinct[frontier.pop()]).max(axis=1) <= ORIENTATION_TOLERANCE
            found = np.flatnonzero(near & (group < 0))
            group[found] = seed
            frontier += found.tolist()
    parts: dict[int, list[int]] = {}
    for row in range(len(order)):
        parts.setdefault(int(group[which[row]]), []).append(row)
    result = []
    for rows in parts.values():
        spread = np.ptp(cosines[rows], axis=0)
        if spread.max() > ORIENTATION_TOLERANCE:
            column = int(spread.argmax())
            low, high = (rows[int(f(cosines[rows, column]))] for f in (np.argmin, np.argmax))
            ends = [f"{members[order[row]][0].name} {(np.round(cosines[row], 7) + 0.0).tolist()}"
                    for row in (low, high)]
            raise DataError(f"series {uid}: ImageOrientationPatient drifts from image to image, {ends[0]} to {ends[1]} "
                            f"(more than {ORIENTATION_TOLERANCE} apart, each within it of another); a volume has one "
                            f"orientation")
        result.append((tuple(cosines[rows[0]]), [order[row] for row in rows]))
    return result


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


def _groups_volumes(groups: dict[str, list[int]], part: list[int], positions: np.ndarray, shared: int) -> bool:
    """Whether a StackID or temporal position's ``groups`` of ``part`` are volumes: at each shared
    position its images take several values, and each group holds several positions or there are no
    more groups than images share a position (a single-slice time series). A value per slice (a
    temporal position counting slices, or unique to each) tells no volume from another."""
    values: dict[int, set[str]] = {}
    for value, group in groups.items():
        for k in group:
            values.setdefault(int(positions[k]), set()).add(value)
    counts = np.bincount(positions[part])
    apart = all(len(values[p]) > 1 for p in np.flatnonzero(counts > 1).tolist())
    spans = all(len(set(positions[g].tolist())) > 1 for g in groups.values()) or len(groups) <= shared
    return apart and spans


def _split_repeats(part: list[int], members: list, positions: np.ndarray, heights: np.ndarray,
                   uid: str) -> list[tuple[dict[str, str], list[int]]]:
    """({attribute: value}, images) of each volume of ``part``: ``part`` as it is where no two of
    its images share a position; else split by the first of VOLUME_ATTRIBUTES whose values are
    volumes (_groups_volumes; each value split again), or the first of REPEAT_ATTRIBUTES that makes as many
    volumes as images share a position, each with each of its positions once; else refused."""
    shared = _repeated(part, positions)
    if shared <= 1:
        return [({}, part)]
    for name in SPLIT_ATTRIBUTES:
        groups = _split_by(part, members, name)
        if name in VOLUME_ATTRIBUTES and len(groups) > 1 and _groups_volumes(groups, part, positions, shared):
            return [({name: value, **values}, volume) for value, group in groups.items()
                    for values, volume in _split_repeats(group, members, positions, heights, uid)]
        if name in REPEAT_ATTRIBUTES and len(groups) == shared and all(_repeated(g, positions) == 1
                                                                       for g in groups.values()):
            return [({name: value}, g) for value, g in groups.items()]
    counts = np.bincount(positions[part])
    repeated = [int(p) for p in np.flatnonzero(counts > 1)]
    at = [float(heights[next(k for k in part if positions[k] == p)]) for p in repeated]
    first = [members[k][0].name for k in part if positions[k] == repeated[0]]
    shown = ", ".join(f"{h:.3f}" for h in at[:6]) + (", ..." if len(at) > 6 else "")
    raise DataError(f"series {uid}: {first[0]} and {first[1]} lie at the same slice position {at[0]:.3f} mm "
                    f"({len(at)} position(s) held {shared} times at most: {shown} mm) and nothing tells them apart "
                    f"({', '.join(SPLIT_ATTRIBUTES)}); the series mixes acquisitions")


def _labelled(name: str, value: str) -> str:
    return f"{name} {value or '(none)'}"


def _split_orientation(part: list[int], members: list, cosines: tuple[float, ...], uid: str) -> list:
    """(sort key, label, images) of each volume of ``part``, the images of one orientation (_split_repeats)."""
    numbers = [o[1] for o in (_order(_text(members[k][1], "InstanceNumber")) for k in part) if o[0] == 1]
    first = (0, min(numbers)) if numbers else (1, 0.0)  # orientations without InstanceNumber last
    heights, positions = np.zeros(len(members)), np.zeros(len(members), dtype=np.int64)
    heights[part] = _heights([members[k] for k in part], cosines)
    positions[part] = _positions(heights[part])
    return [((first, cosines) + tuple(_order(values.get(name, "")) for name in SPLIT_ATTRIBUTES),
             ", ".join(_labelled(name, values[name]) for name in SPLIT_ATTRIBUTES if name in values), g)
            for values, g in _split_repeats(part, members, positions, heights, uid)]


def split_volumes(members: list, uid: str) -> list[SeriesVolume]:
    """The volumes of a series' images ``members`` ((path, header) pairs: single-frame slices, or
    the frame views of an Enhanced CT), by the rule in this module's docstring; a series of one
    volume gives one, labelled ``""``. DataError, in one line, where images share a position and
    nothing tells them apart (naming the positions), where an orientation's cosines drift, and for a
    series of localizers alone."""
    members = _without_localizers(members, uid)
    orientations = _by_orientation(members, _stable_order(members), uid)
    found = [volume for cosines, part in orientations for volume in _split_orientation(part, members, cosines, uid)]
    if len(orientations) > 1:
        found = [(key, ", ".join(filter(None, [f"ImageOrientationPatient {[round(c, ORIENTATION_DECIMALS) + 0.0 for c in key[1]]}", label])), g)
                 for key, label, g in found]
    found.sort(key=lambda item: item[0])
    return [SeriesVolume(n, label if len(found) > 1 else "", [members[k] for k in sorted(g)])
            for n, (_, label, g) in enumerate(found, start=1)]


def pick_volume(volumes: list[SeriesVolume], number: int | None, where: str,
                hint: str = PICK_BY_FOLDER) -> SeriesVolume:
    """Volume ``number`` of ``volumes`` (the series ``where``); the only one where ``number`` is
    None; else DataError in one line listing them and saying what to do (``hint``: what the
    caller offers, PICK_WITH_OPTION where it takes --volume)."""
    listing = "; ".join(v.describe() for v in volumes)
    if number is None:
        if len(volumes) == 1:
            return volumes[0]
        raise DataError(f"{where} holds {len(volumes)} volumes: {listing}; {hint}")
    if not 1 <= number <= len(volumes):
        raise DataError(f"--volume {number}: {where} holds {len(volumes)} volume{'s' if len(volumes) > 1 else ''}"
                        f" ({listing})")
    return volumes[number - 1]
