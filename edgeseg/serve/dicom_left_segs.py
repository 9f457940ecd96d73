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

from edgeseg.runtime.provenance import described_manifest
from edgeseg.serve.dicom_intake import SEGMENTATION_STORAGE
from edgeseg.serve.dicom_segmented import UNKNOWN_BUNDLE, SegReference
from edgeseg.serve.dicom_series import HeldSeries
from edgeseg.serve.dicom_work import regular_file, set_aside

log = logging.getLogger("edgeseg.listen")
_NO_SEG = "is named as a SEG and is none (not DICOM that can be read, or of another SOP class)"


def left_segs(work: Path, in_flight: dict[str, HeldSeries]) -> list[Path]:
    """Of the SEGs left in ``work``, give each whose series is in ``in_flight`` to that series (its
    ``replaces`` and ``left``), set aside each that is no SEG (never sent), and return the others,
    to be sent as they are, in the order they were made (by SEG series and Instance Number)."""
    found, passed = [], []
    for path in sorted(work.glob("*.seg.dcm")):
        (found if regular_file(path) else passed).append(path)
    if passed:
        log.warning("%d file(s) in %s named as a SEG are no regular file (a link, a FIFO, a folder) and are passed "
                    "over, never opened: %s", len(passed), work, ", ".join(path.name for path in passed))
    to_send = []
    for path in found:
        ds = _seg(path)
        if ds is None:  # no peer takes it: sent again at every round for good, were it kept to be sent
            aside = set_aside(work, "", path, _NO_SEG, say=False)
            if aside is not None:
                log.warning("%s in the work folder %s %s; moved to %s, never sent", path.name, work, _NO_SEG, aside)
            continue
        series_uid, seg = _reference(ds, path.name)
        held = in_flight.get(series_uid) if series_uid is not None else None
        if held is None:
            to_send.append(((str(ds.get("SeriesInstanceUID", "")), _instance(ds), path.name), path))
            continue
        held.replaces = _newest(held.replaces, seg)
        held.left += (seg,)
        log.warning("series %s: %s, made by an earlier node that was stopped before forwarding it all, is replaced "
                    "by the SEG of its volume made now (SEG series %s, instance %d next)", series_uid, path.name,
                    seg.series_instance_uid, seg.instance_number + 1)
    return [path for _, path in sorted(to_send)]


def let_go_left(node, series_uid: str, left: tuple[SegReference, ...], replaced: set[str]) -> None:
    """Remove each SEG of ``left`` (in the work folder) whose SEG series is among ``replaced`` (a
    SEG made now, and forwarded, replaces it); hand the others to be sent as they are. Never
    raises: the series' own SEGs are made and forwarded by then (a SEG that cannot be removed
    stays, named in one error line, and the next start finds it again)."""
    for seg in left:
        path = node.work / seg.file
        try:
            if seg.series_instance_uid in replaced:
                path.unlink(missing_ok=True)
                log.info("series %s: %s, left by an earlier node, is replaced and removed", series_uid, seg.file)
            elif path.exists() and node._forwarder is not None:
                node._forwarder.stranded.append((path, True))
                log.warning("series %s: %s, left by an earlier node, is replaced by no SEG made now; it is sent as it "
                            "is", series_uid, seg.file)
        except Exception as exc:  # OSError: the folder turned read-only, ...; any other: a fault, with its traceback
            log.error("series %s: %s, left by an earlier node, cannot be let go (%s); it stays in %s", series_uid,
                      seg.file, exc, node.work, exc_info=None if isinstance(exc, OSError) else exc)


def _seg(path: Path):
    """The data set of the SEG ``path`` (its pixels not read); None where it cannot be read as
    DICOM (no peer could take it: dicom_forward.py) or is of another SOP class than SEG."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # not DICOM, cut short in its header, unreadable
        return None
    return ds if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE else None


def _reference(ds, name: str) -> tuple[str | None, SegReference | None]:
    """(the Series Instance UID of the series the SEG ``ds`` (file ``name``) was made of, its
    SegReference), or (None, None) where it is not a SEG of one series (it is then sent as it is).
    Its bundle is the manifest sha256's part its Content Description holds, :data:`UNKNOWN_BUNDLE`
    where it holds none: a SEG of one model does not become the next instance of another's."""
    try:
        [series] = ds.ReferencedSeriesSequence
        images = tuple(sorted(str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence))
        segments = len(ds.SegmentSequence)
        # every frame of every segment is written (none omitted): frames = segments x slices
        slices = int(ds.get("NumberOfFrames") or 0) // segments
        bundle = described_manifest(ds.get("ContentDescription") or "") or UNKNOWN_BUNDLE
        return str(series.SeriesInstanceUID), SegReference(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                                           _instance(ds), name, slices, bundle, images=images)
    except Exception:  # no SEG of one series, no segments: not one to replace
        return None, None


def _instance(ds) -> int:
    """The SEG's Instance Number (1 where it has none, or none that is a number)."""
    try:
        return int(ds.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1


def _newest(earlier: tuple[SegReference, ...] | None, seg: SegReference) -> tuple[SegReference, ...]:
    """``earlier`` (the SEGs noted of the series) with ``seg`` in place of the one of its SEG
    series it follows, or added (the first SEG of a volume, made after those noted)."""
    earlier = tuple(earlier or ())
    same = [old for old in earlier if old.series_instance_uid == seg.series_instance_uid]
    if any(old.instance_number >= seg.instance_number for old in same):
        return earlier
    return tuple(old for old in earlier if old not in same) + (seg,)
