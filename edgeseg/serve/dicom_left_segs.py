"""The SEGs a DICOM node finds at start in its ``--work`` folder (``*.seg.dcm``): made there by an
earlier node forwarding without ``--out``, and neither sent and removed nor kept in the unsent
folder (a node killed while it forwarded them, or a stop that could not keep them there).

A SEG of a series that is taken up again in flight (dicom_recovery.py: killed between the SEG's
making and the series' keeping) is not sent as it is: the series is segmented again, and that SEG
is read as the earlier SEG its volume's new SEG replaces (its SEG series, the next Instance
Number; :mod:`edgeseg.serve.dicom_volume_match` pairs them by their images), so the peer gets one
SEG series per volume whether or not that SEG reached it before the kill. It is removed once its
replacement is made and forwarded (sent, kept in the unsent folder, or held to be sent); one its
series' new SEGs replace none of, or whose series is not segmented after all, is sent as it is.
Any other (its series kept for late images, or gone) is sent as it is, as the SEGs in the unsent
folder are. As everywhere in the work folder, a link or a FIFO of that name is never followed or
opened: it is passed over, in one warning line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgeseg.serve.dicom_segmented import SegReference
from edgeseg.serve.dicom_series import HeldSeries
from edgeseg.serve.dicom_work import regular_file

log = logging.getLogger("edgeseg.listen")


def left_segs(work: Path, in_flight: dict[str, HeldSeries]) -> list[Path]:
    """Of the SEGs left in ``work``, give each whose series is in ``in_flight`` to that series (its
    ``replaces`` and ``left``) and return the others, to be sent as they are, oldest name first."""
    found, passed = [], []
    for path in sorted(work.glob("*.seg.dcm")):
        (found if regular_file(path) else passed).append(path)
    if passed:
        log.warning("%d file(s) in %s named as a SEG are no regular file (a link, a FIFO, a folder) and are passed "
                    "over, never opened: %s", len(passed), work, ", ".join(path.name for path in passed))
    to_send = []
    for path in found:
        series_uid, seg = _reference(path)
        held = in_flight.get(series_uid) if series_uid is not None else None
        if held is None:
            to_send.append(path)
            continue
        held.replaces = _newest(held.replaces, seg)
        held.left += (seg,)
        log.warning("series %s: %s, made by an earlier node that was stopped before forwarding it all, is replaced "
                    "by the SEG of its volume made now (SEG series %s, instance %d next)", series_uid, path.name,
                    seg.series_instance_uid, seg.instance_number + 1)
    return to_send


def let_go_left(node, series_uid: str, left: tuple[SegReference, ...], replaced: set[str]) -> None:
    """Remove each SEG of ``left`` (in the work folder) whose SEG series is among ``replaced`` (a
    SEG made now, and forwarded, replaces it); hand the others to be sent as they are."""
    for seg in left:
        path = node.work / seg.file
        if seg.series_instance_uid in replaced:
            path.unlink(missing_ok=True)
            log.info("series %s: %s, left by an earlier node, is replaced and removed", series_uid, seg.file)
        elif path.exists() and node._forwarder is not None:
            node._forwarder.stranded.append((path, True))
            log.warning("series %s: %s, left by an earlier node, is replaced by no SEG made now; it is sent as it is",
                        series_uid, seg.file)


def _reference(path: Path) -> tuple[str | None, SegReference | None]:
    """(the Series Instance UID of the series the SEG ``path`` was made of, its SegReference), or
    (None, None) where it cannot be read as a SEG of one series (it is then sent as it is, and a
    file no peer could take stays where it is: dicom_forward.py)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        [series] = ds.ReferencedSeriesSequence
        images = tuple(sorted(str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence))
        segments = len(ds.SegmentSequence)
        # every frame of every segment is written (none omitted): frames = segments x slices
        slices = int(ds.get("NumberOfFrames") or 0) // segments
        return str(series.SeriesInstanceUID), SegReference(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                                           int(ds.get("InstanceNumber") or 1), path.name, slices,
                                                           images=images)
    except Exception:  # not DICOM, cut short, no SEG, a SEG of several series: not one to replace
        return None, None


def _newest(earlier: tuple[SegReference, ...] | None, seg: SegReference) -> tuple[SegReference, ...]:
    """``earlier`` (the SEGs noted of the series) with ``seg`` in place of the one of its SEG
    series it follows, or added (the first SEG of a volume, made after those noted)."""
    earlier = tuple(earlier or ())
    same = [old for old in earlier if old.series_instance_uid == seg.series_instance_uid]
    if any(old.instance_number >= seg.instance_number for old in same):
        return earlier
    return tuple(old for old in earlier if old not in same) + (seg,)
