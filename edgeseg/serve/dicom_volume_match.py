"""Which SEG of a series each of its volumes replaces, when images of the series arrive after its
SEGs were made (dicom_segmented.py) and the series is split into volumes again with them (by the
one rule of :mod:`edgeseg.data.dicom_volumes`).

A volume is known by its images, not by its number: late images may add a volume (a second stack
after a series of one, a third after two) and so shift the numbers. Each volume now is paired with
the earlier SEG it shares the most images with (the SOP Instance UIDs that SEG references), one
for one, the pairs sharing more images first (then the lower numbers). A volume paired so:

- whose images are those its earlier SEG references and none of which arrived since (no late
  image joined it, and none of its images was sent again) is left as it is: its SEG stands and is
  made again by no one;
- else is segmented again, into a SEG that replaces its earlier one (that SEG's series, the next
  Instance Number), unless another bundle made that one (``SegReference.made_by``).

A volume paired with none (a new stack, a new orientation) gets a SEG series of its own. An earlier
SEG paired with no volume (its images now lie in a volume paired with another, or are gone) is
replaced by none, in one warning. An earlier SEG whose images are not known (a note written before
they were noted) is paired only where it is the series' one SEG and the series is one volume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgeseg.serve.dicom_segmented import SegReference

log = logging.getLogger("edgeseg.listen")


@dataclass(frozen=True)
class VolumePlan:
    """What becomes of one volume: segmented (``remake``), into a SEG replacing ``earlier`` (None:
    a SEG series of its own); or left as it is, ``earlier`` its SEG, which stands."""

    remake: bool
    earlier: SegReference | None


def plan_volumes(series_uid: str, earlier: tuple[SegReference, ...] | None, volumes: list[frozenset[str]],
                 arrived: set[str] | None, bundle: str) -> list[VolumePlan]:
    """A :class:`VolumePlan` per volume (``volumes``: the SOP Instance UIDs of each, in order) of a
    series whose SEGs before were ``earlier`` (None: never segmented), ``arrived`` the SOP instances
    stored since (None: not known, every volume is segmented again), ``bundle`` the sha256 of the
    manifest of the bundle segmenting it now; by the rule of this module's docstring."""
    if not earlier:
        return [VolumePlan(True, None) for _ in volumes]
    pairs = _pairs(earlier, volumes)
    plans = []
    for number, images in enumerate(volumes):
        seg = pairs.get(number)
        if seg is None:
            plans.append(VolumePlan(True, None))
        elif set(seg.images) == images and arrived is not None and not (images & arrived):
            plans.append(VolumePlan(False, seg))
        else:
            plans.append(VolumePlan(True, seg.made_by(series_uid, bundle)))
    for seg in [seg for seg in earlier if seg not in pairs.values()]:
        log.warning("series %s: %s (%d slices) is replaced by no SEG: its images are no volume of the series now%s",
                    series_uid, seg.file, seg.slices,
                    "" if seg.images else " (which images it references is not known)")
    return plans


def _pairs(earlier: tuple[SegReference, ...], volumes: list[frozenset[str]]) -> dict[int, SegReference]:
    """The earlier SEG of each volume (by its index) that shares the most images with it, one for
    one, the pairs sharing more images first, then by the SEG's and the volume's order."""
    if len(earlier) == 1 and not earlier[0].images:  # not known: the one SEG of a series of one volume, as before
        return {0: earlier[0]} if len(volumes) == 1 else {}
    shared = sorted(((len(set(seg.images) & images), s, v) for s, seg in enumerate(earlier)
                     for v, images in enumerate(volumes)), key=lambda pair: (-pair[0], pair[1], pair[2]))
    pairs: dict[int, SegReference] = {}
    taken: set[int] = set()
    for count, s, v in shared:
        if count and s not in taken and v not in pairs:
            pairs[v] = earlier[s]
            taken.add(s)
    return pairs
