"""The SEG(s) the DICOM node makes of one complete series: one per volume of it.

A series holding several volumes (two orientations, several stacks, temporal positions: the rule
of :mod:`edgeseg.data.dicom_volumes`, the one ``edgeseg predict`` splits by) gets one SEG per
volume, ``UID.volK.seg.dcm``, each a SEG series of its own referencing exactly the images of
volume K, with that volume's masks. A series of one volume gets ``UID.seg.dcm``. Segmented again
with images that arrived late (:mod:`edgeseg.serve.dicom_segmented`), each volume's SEG replaces
that volume's earlier SEG, in a file named after it (``UID-2.seg.dcm``, ``UID.vol1-2.seg.dcm``),
and a volume no late image joined keeps its SEG as it is (:mod:`edgeseg.serve.dicom_volume_match`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path

from edgeseg.serve.dicom_left_segs import let_go_left
from edgeseg.serve.dicom_segmented import SegReference
from edgeseg.serve.dicom_series import seg_path
from edgeseg.serve.dicom_volume_match import plan_volumes
from edgeseg.serve.dicom_work import sync_file, sync_folder

log = logging.getLogger("edgeseg.listen")


def segment_series(node, series_uid: str, folder: Path, replaces: tuple[SegReference, ...] | None,
                   arrived: set[str] | None = None, left: tuple[SegReference, ...] = ()) -> Path | None:
    """Segment the series in ``folder`` for ``node`` (a :class:`~edgeseg.serve.dicom_node.DicomNode`):
    write and/or forward the SEG of each of its volumes; return the path of the last (None where
    every volume's SEG stands as it was). ``replaces``: the SEGs made of it before, one per volume;
    ``arrived``: the images stored since (None: not known); ``left``: SEGs of it an earlier node
    left in the work folder (:mod:`edgeseg.serve.dicom_left_segs`), removed once forwarded the ones
    that replace them, the others sent as they are. The series is split (and refused, where
    images share a position and nothing tells them apart), and every volume read and its SEG sources
    checked, before any volume is segmented: a series yields the SEGs of all the volumes it
    segments or none (a SEG written before a later volume fails is removed, and the earlier SEGs
    stand), and each SEG is audited once; a failure is audited once, by the caller."""
    from edgeseg.data.dicom import read_dicom_volumes
    from edgeseg.runtime.provenance import provenance
    from edgeseg.runtime.seg_sources import seg_source_datasets

    record = provenance(node.segmenter)
    bundle = record.get("manifest_sha256", "")
    # a series no SEG can be made of does not hold up the model, nor leave the SEGs of some volumes
    volumes = [(part, volume, refs, seg_source_datasets(refs), frozenset(str(ds.SOPInstanceUID) for _, ds in
                                                                         part.members))
               for part, volume, refs in read_dicom_volumes(folder, keep_headers=True)]
    plans = plan_volumes(series_uid, replaces, [images for *_, images in volumes], arrived, bundle)
    written: list[tuple[Path, float]] = []
    try:
        for (part, volume, refs, sources, _), plan in zip(volumes, plans):
            if plan.remake:
                written.append(_write_volume(node, _target(node.out or node.work, series_uid, part, plan.earlier),
                                             volume, refs, sources, record, plan.earlier))
    except BaseException:
        for target, _ in written:  # no SEG of part of the volumes is kept or forwarded
            target.unlink(missing_ok=True)
        if written and node._claim is not None:  # and its removal on disk, as its write was
            with contextlib.suppress(OSError):  # the failure that stopped the volumes is the one told
                sync_folder(written[0][0].parent)
        raise
    made, made_now = [], iter(written)
    for (part, volume, _, sources, images), plan in zip(volumes, plans):
        which = f" (volume {part.describe()})" if part.label else ""
        if not plan.remake:
            log.info("series %s%s: no image of it arrived since its SEG was made; %s stands", series_uid, which,
                     plan.earlier.file)
            made.append(plan.earlier)
            continue
        target, seconds = next(made_now)
        earlier = plan.earlier
        log.info("series %s%s: %d slices segmented -> %s%s", series_uid, which, volume.num_slices, target,
                 "" if earlier is None else f", replacing {earlier.file} ({earlier.slices} slices, "
                 f"SOP instance {earlier.sop_instance_uid})")
        if node.audit is not None:
            node.audit.series(series_uid, seconds, study_uid=str(sources[0].get("StudyInstanceUID", "")),
                              slices=volume.num_slices, seg=target,
                              replaces=None if earlier is None else earlier.sop_instance_uid)
        made.append(SegReference.read(target, volume.num_slices, bundle, images))
    node.stats.segmented.append(series_uid)
    with node._lock:
        node._segmented.made(series_uid, tuple(made))
    targets = [target for target, _ in written]
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
    replaced = {plan.earlier.series_instance_uid for plan in plans if plan.remake and plan.earlier is not None}
    let_go_left(node, series_uid, left, replaced)
    return targets[-1] if targets else None


def _target(folder: Path, series_uid: str, part, earlier: SegReference | None) -> Path:
    """Where a volume's SEG goes in ``folder``: named after the SEG it replaces and by its own
    Instance Number N (``UID.vol1.seg.dcm`` is followed by ``UID.vol1-2.seg.dcm``, whatever the
    volume's number now, whether or not the earlier file is still there), else ``UID.volK`` (K its
    number now), ``UID`` for a series of one volume; a file of that name there already gets a
    number after it (:func:`seg_path`): no SEG is written over."""
    stem = re.fullmatch(r"(.+?)(-[0-9]+)*\.seg\.dcm", earlier.file) if earlier is not None else None
    if stem is not None and (stem[1] == series_uid or stem[1].startswith(f"{series_uid}.vol")):
        name = stem[1]
    else:
        name = f"{series_uid}.vol{part.number}" if part.label else series_uid  # one volume: no label
    return seg_path(name if earlier is None else f"{name}-{earlier.instance_number + 1}", folder)


def _write_volume(node, target: Path, volume, refs, sources: list, record: dict,
                  replaces: SegReference | None) -> tuple[Path, float]:
    """Segment one volume (``refs``: its images, ``sources``: their checked headers) and write its
    SEG to ``target``; return its path and the seconds taken."""
    from edgeseg.runtime.writers import write_dicom_seg

    began = time.monotonic()
    labels = node.segmenter.predict_volume(volume)
    write_dicom_seg(labels, volume, refs, node.segmenter.labels, target, sources=sources,
                    parameters=node.segmenter.algorithm_parameters(), provenance=record,
                    series=None if replaces is None else (replaces.series_instance_uid, replaces.instance_number + 1))
    if node._claim is not None:  # on disk before the images it was made of are let go
        sync_file(target)
        sync_folder(target.parent)
    return target, time.monotonic() - began
