"""The SEG(s) the DICOM node makes of one complete series: one per volume of it.

A series holding several volumes (two orientations, several stacks, temporal positions: the rule
of :mod:`edgeseg.data.dicom_volumes`, the one ``edgeseg predict`` splits by) gets one SEG per
volume, ``UID.volK.seg.dcm``, each a SEG series of its own referencing exactly the images of
volume K, with that volume's masks. A series of one volume gets ``UID.seg.dcm`` as before, which
may replace the SEG made of part of it (:mod:`edgeseg.serve.dicom_segmented`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from edgeseg.serve.dicom_segmented import SegReference
from edgeseg.serve.dicom_series import seg_path
from edgeseg.serve.dicom_work import sync_file, sync_folder

log = logging.getLogger("edgeseg.listen")


def segment_series(node, series_uid: str, folder: Path, replaces: SegReference | None) -> Path:
    """Segment the series in ``folder`` for ``node`` (a :class:`~edgeseg.serve.dicom_node.DicomNode`):
    write and/or forward the SEG of each of its volumes; return the path of the last. The series
    is split (and refused, where images share a position and nothing tells them apart), and every
    volume read and its SEG sources checked, before any volume is segmented: a series yields the
    SEGs of all its volumes or none (a SEG written before a later volume fails is removed), and is
    audited once, as segmented or as failed."""
    from edgeseg.data.dicom import read_dicom_volumes
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.seg_sources import seg_source_datasets

    record = provenance(node.segmenter)
    replaces = replaces and replaces.made_by(series_uid, record.get("manifest_sha256", ""))
    # a series no SEG can be made of does not hold up the model, nor leave the SEGs of some volumes
    volumes = [(part, volume, refs, seg_source_datasets(refs))
               for part, volume, refs in read_dicom_volumes(folder, keep_headers=True)]
    if len(volumes) > 1 and replaces is not None:  # each volume's SEG is a series of its own
        log.info("series %s: %s, made of part of it, is followed by one SEG per volume", series_uid, replaces.file)
        replaces = None
    written: list[tuple[Path, float]] = []
    try:
        for part, volume, refs, sources in volumes:
            name = f"{series_uid}.vol{part.number}" if part.label else series_uid  # one volume: no label
            written.append(_write_volume(node, name, volume, refs, sources, record, replaces))
    except BaseException:
        for target, _ in written:  # no SEG of part of the volumes is kept or forwarded
            target.unlink(missing_ok=True)
        if written and node._claim is not None:  # and its removal on disk, as its write was
            with contextlib.suppress(OSError):  # the failure that stopped the volumes is the one told
                sync_folder(written[0][0].parent)
        raise
    for (part, volume, _, sources), (target, seconds) in zip(volumes, written):
        which = f" (volume {part.describe()})" if part.label else ""
        log.info("series %s%s: %d slices segmented -> %s%s", series_uid, which, volume.num_slices, target,
                 "" if replaces is None else f", replacing {replaces.file} ({replaces.slices} slices, "
                 f"SOP instance {replaces.sop_instance_uid})")
        if node.audit is not None:
            node.audit.series(series_uid, seconds, study_uid=str(sources[0].get("StudyInstanceUID", "")),
                              slices=volume.num_slices, seg=target,
                              replaces=None if replaces is None else replaces.sop_instance_uid)
    targets = [target for target, _ in written]
    made = SegReference.read(targets[0], volumes[0][1].num_slices, record.get("manifest_sha256", ""))
    node.stats.segmented.append(series_uid)
    with node._lock:
        node._segmented.made(series_uid, made)
    for target in targets if node.forward is not None else ():
        own = node.out is None  # the copy in the work folder goes once sent or kept in the unsent folder, never before
        try:  # each SEG on its own: one failing unexpectedly stops neither the others nor the series, audited above
            let_go = node._forwarder.forward(series_uid, target, own)
        except Exception as exc:  # a fault past the forwarding's own handling: the SEG stays and is tried again
            node._forwarder.stranded.append((target, own))
            log.exception("series %s: forwarding %s failed: %s; it stays in %s", series_uid, target.name, exc, target)
            continue
        if let_go and own:
            target.unlink(missing_ok=True)
    return targets[-1]


def _write_volume(node, name: str, volume, refs, sources: list, record: dict,
                  replaces: SegReference | None) -> tuple[Path, float]:
    """Segment one volume (``refs``: its images, ``sources``: their checked headers) and write its
    SEG as ``name``.seg.dcm; return its path and the seconds taken."""
    from edgeseg.runtime.writers import write_dicom_seg

    began = time.monotonic()
    labels = node.segmenter.predict_volume(volume)
    target = seg_path(name, node.out or node.work)
    write_dicom_seg(labels, volume, refs, node.segmenter.labels, target, sources=sources,
                    parameters=node.segmenter.algorithm_parameters(), provenance=record,
                    series=None if replaces is None else (replaces.series_instance_uid, replaces.instance_number + 1))
    if node._claim is not None:  # on disk before the images it was made of are let go
        sync_file(target)
        sync_folder(target.parent)
    return target, time.monotonic() - began
