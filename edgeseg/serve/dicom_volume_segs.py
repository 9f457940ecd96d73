"""The SEG(s) the DICOM node makes of one complete series: one per volume of it.

A series holding several volumes (two orientations, several stacks, temporal positions: the rule
of :mod:`edgeseg.data.dicom_volumes`, the one ``edgeseg predict`` splits by) gets one SEG per
volume, ``UID.volK.seg.dcm``, each a SEG series of its own referencing exactly the images of
volume K, with that volume's masks. A series of one volume gets ``UID.seg.dcm`` as before, which
may replace the SEG made of part of it (:mod:`edgeseg.serve.dicom_segmented`).
"""

from __future__ import annotations

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
    is split (and refused, where images share a position and nothing tells them apart) before any
    volume is read."""
    from edgeseg.data.dicom import read_dicom_volumes
    from edgeseg.runtime.provenance import provenance

    record = provenance(node.segmenter)
    replaces = replaces and replaces.made_by(series_uid, record.get("manifest_sha256", ""))
    targets: list[Path] = []
    made = None
    for part, volume, refs in read_dicom_volumes(folder, keep_headers=True):
        several = bool(part.label)  # a series of one volume has no label
        if several and replaces is not None:  # each volume's SEG is a series of its own
            log.info("series %s: %s, made of part of it, is followed by one SEG per volume", series_uid, replaces.file)
            replaces = None
        name = f"{series_uid}.vol{part.number}" if several else series_uid
        targets.append(_segment_volume(node, series_uid, name, volume, refs, record, replaces,
                                       f" (volume {part.describe()})" if several else ""))
        made = made or SegReference.read(targets[-1], volume.num_slices, record.get("manifest_sha256", ""))
    node.stats.segmented.append(series_uid)
    with node._lock:
        node._segmented.made(series_uid, made)
    for target in targets if node.forward is not None else ():
        try:
            node._forwarder.forward(series_uid, target, None if node.out is None else str(target))
        finally:  # the copy in the work folder (no --out) goes either way
            if node.out is None:
                target.unlink(missing_ok=True)
    return targets[-1]


def _segment_volume(node, series_uid: str, name: str, volume, refs, record: dict, replaces: SegReference | None,
                    which: str) -> Path:
    """Write the SEG of one volume (``refs``: its images) as ``name``.seg.dcm; return its path."""
    from edgeseg.runtime.seg_sources import seg_source_datasets
    from edgeseg.runtime.writers import write_dicom_seg

    began = time.monotonic()
    sources = seg_source_datasets(refs)  # a series no SEG can be made of does not hold up the model
    labels = node.segmenter.predict_volume(volume)
    target = seg_path(name, node.out or node.work)
    write_dicom_seg(labels, volume, refs, node.segmenter.labels, target, sources=sources,
                    parameters=node.segmenter.algorithm_parameters(), provenance=record,
                    series=None if replaces is None else (replaces.series_instance_uid, replaces.instance_number + 1))
    if node._claim is not None:  # on disk before the images it was made of are let go
        sync_file(target)
        sync_folder(target.parent)
    log.info("series %s%s: %d slices segmented -> %s%s", series_uid, which, volume.num_slices, target, "" if replaces is None
             else f", replacing {replaces.file} ({replaces.slices} slices, SOP instance {replaces.sop_instance_uid})")
    if node.audit is not None:
        node.audit.series(series_uid, time.monotonic() - began, study_uid=str(sources[0].get("StudyInstanceUID", "")),
                          slices=volume.num_slices, seg=target,
                          replaces=None if replaces is None else replaces.sop_instance_uid)
    return target
