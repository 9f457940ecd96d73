"""What a DICOM node starting on a ``--work`` folder does with the series an earlier node left
there (dicom_work.py finds and checks them): a series that was being received, waiting or being
segmented is in flight again, to be segmented once complete (``--idle`` seconds from now, so a
sender that goes on sending it adds to it); a series kept for late images is kept for the time it
had left, with the SEGs (one per volume) it was segmented into. Of a series in flight that was
segmented before, the node cannot tell the images that came late from those kept: each of its
volumes is segmented again (dicom_volume_match.py). One log line and one audit line
(``recovered``) per series."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edgeseg.serve.dicom_segmented import SegmentedSeries, SegReference
from edgeseg.serve.dicom_series import HeldSeries
from edgeseg.serve.dicom_work import recover

log = logging.getLogger("edgeseg.listen")


def take_up(work: Path, previous: int | None, in_flight: dict[str, HeldSeries], segmented: SegmentedSeries,
            audit=None) -> None:
    """Put the series left in ``work`` (by the node of pid ``previous``) into ``in_flight`` or
    ``segmented``; called before the node listens."""
    found, staged = recover(work)
    by = f"the node of pid {previous}" if previous and previous != os.getpid() else "an earlier node"
    if staged:
        log.warning("removed %d image(s) in %s whose writing %s did not finish: they were never acknowledged", staged,
                    work, by)
    now = time.monotonic()
    for series in found:
        if series.over_limit and audit is not None:
            audit.recovered(series.uid, series.over_limit, "over_limit", previous)
        if not series.frames:
            continue
        held = HeldSeries(series.folder, now, durable=True, shape=series.shape)
        held.renamed = True  # made or merged by recover() and not flushed: flushed with the next image stored
        held.frames, held.sizes = dict(series.frames), dict(series.sizes)
        held.slices, held.stored = sum(held.frames.values()), sum(held.sizes.values())
        # the fields and types of each SEG's note checked (dicom_seg_notes.py)
        segs = None if series.reference is None else tuple(SegReference.noted(f) for f in series.reference["segs"])
        files = "" if segs is None else ", ".join(seg.file for seg in segs)
        if series.in_flight:
            held.replaces, held.arrived = segs, None  # which of its images came late is not known
            in_flight[series.uid] = held
            outcome = "in_flight"
            log.warning("series %s: %d image(s) acknowledged by %s and not yet segmented were found in %s; they are "
                        "segmented once the series is complete%s", series.uid, len(held.frames), by, work,
                        "" if segs is None else f", into SEGs that replace {files}, volume by volume")
        else:
            left = series.reference["until"] - time.time()
            segmented.adopt(series.uid, held, segs, left, now)
            outcome = "kept"
            log.info("series %s: its %d image(s), segmented into %s, are kept %.0f s more for images of it arriving late",
                     series.uid, len(held.frames), files, left)
        if audit is not None:
            audit.recovered(series.uid, len(held.frames), outcome, previous)
