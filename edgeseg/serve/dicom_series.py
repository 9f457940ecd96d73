"""One series as the DICOM node holds it while its images arrive: a folder of files, what they
count against the readers' volume limit, in pixels and in bytes on disk, and the open associations
still sending it (when it is complete); and where its SEG is written."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgeseg.atomic import atomic_path
from edgeseg.errors import DataError
from edgeseg.limits import VOLUME_BYTES_ENV, check_volume, current_limits
from edgeseg.runtime.seg_sources import same_value
from edgeseg.serve.dicom_intake import ENHANCED_CT_CLASSES, STATUS_DATASET_MISMATCH
from edgeseg.serve.dicom_received import place_received
from edgeseg.serve.dicom_work import check_series, sync_file, sync_folder

log = logging.getLogger("edgeseg.listen")


class ImageNotStored(DataError):
    """An image the disk would not take (full, a quota, a file size limit, gone): the node's
    failure, not the peer's. ``comment`` says so without the node's paths, for the peer."""

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot store it in {path}: {exc.strerror or exc}")
        self.comment = f"cannot store it: {exc.strerror or exc}"


class MixedSeries(DataError):
    """An image that would make its series both an Enhanced CT file and other images: the reader
    takes a series from one multi-frame file or from single-frame slices, never both, so the
    image that would mix them is refused (0xA900), whichever comes first stays."""

    status = STATUS_DATASET_MISMATCH


class DuplicateInstance(DataError):
    """A slice whose SOP Instance UID is that of another image of its series (:meth:`HeldSeries.keep`)."""

    status = STATUS_DATASET_MISMATCH


@dataclass
class HeldSeries:
    """The images of one series received so far (``last``: time.monotonic() of the latest image,
    or of the end of the last association sending it; ``senders``: the open associations whose
    latest image is of this series: :class:`SendingAssociations`).

    A re-sent image replaces its file and must not count twice (a peer re-sending a whole series
    would otherwise meet the limit at half its size), so frames and bytes are kept per SOP
    instance."""

    folder: Path
    last: float
    slices: int = 0  # frames of the images held, for the volume limit
    frames: dict[str, int] = field(default_factory=dict)
    stored: int = 0  # bytes of the files held
    sizes: dict[str, int] = field(default_factory=dict)
    senders: set = field(default_factory=set)
    shape: tuple[int, int] = (0, 0)  # rows, columns of its images
    replaces: object = None  # tuple of dicom_segmented.SegReference: the SEGs made of its images before, one per volume
    # the SOP instances stored since those SEGs were made (None: not known, after a restart), which
    # tell the volumes late images joined from those left as they were (dicom_volume_match.py)
    arrived: set | None = field(default_factory=set)
    durable: bool = False  # each image flushed to disk before it is acknowledged (--work: dicom_work.py)
    # its folder was renamed (taken up again from those kept: dicom_segmented.py) and the work
    # folder not flushed since: the next image stored flushes it before its Success
    renamed: bool = False
    # the node's associations writing an image into it now (outside the node's lock, under ``lock``,
    # which keeps its counts and bounds exact): it is not complete while one is
    writers: int = 0
    opening: bool = False  # in flight for an image being written; none stored in it yet
    # why it is not segmented: images of it refused as they arrived and not taken since (RefusedImages)
    refused: str | None = None
    # the SEGs of it an earlier node left unsent or unremoved in the --work folder (killed while forwarding them):
    # each is replaced by the SEG of its volume made now, then removed (dicom_left_segs.py)
    left: tuple = ()
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def complete(self, idle: float, now: float) -> bool:
        """No open association is sending it and ``idle`` seconds have passed since its last image
        or the end of the association that sent it last."""
        return not self.senders and not self.writers and now - self.last >= idle

    def check_pixels(self, sop_uid: str, frames: int, rows: int, columns: int) -> None:
        """DataError when the image would take the series past the readers' volume limit."""
        held = self.slices - self.frames.get(sop_uid, 0)
        check_volume((held + frames, rows, columns), f"series {self.folder.name}")
        self.shape = (rows, columns)

    def keep(self, sop_uid: str, ds, frames: int, received: Path | None = None) -> None:
        """Write the image into the folder (made if need be) and count it: ``ds``, or the file
        ``received`` as it is (an Enhanced CT received to a file: dicom_received.py, hard-linked
        where it can be, never read into memory); DataError, and nothing
        written, when the series' files would take more bytes than the volume limit, or
        :class:`ImageNotStored` when the disk refuses them. The pixel count alone leaves
        out headers and pixels wider than CT's two bytes, so a peer could otherwise put more on
        disk than the limit says. Called under ``lock``."""
        self._check_one_form(sop_uid, ds)
        self._check_same_instance(sop_uid, ds)
        budget, target = current_limits().max_volume_bytes, self.folder / f"{sop_uid}.dcm"
        new_folder = self.durable and (self.renamed or not self.folder.is_dir())
        try:
            with atomic_path(target, suffix=".dcm") as tmp:
                if received is None:
                    ds.save_as(tmp, enforce_file_format=True)
                else:
                    place_received(received, tmp)
                size = tmp.stat().st_size
                held = self.stored - self.sizes.get(sop_uid, 0) + size
                if held > budget:
                    raise DataError(f"series {self.folder.name}: its files would take {held} bytes on disk, over "
                                    f"the limit of {budget} (--max-volume-bytes or {VOLUME_BYTES_ENV})")
                if self.durable:  # its bytes on disk before its name: a power cut leaves no SOP.dcm cut short
                    sync_file(tmp)
            if self.durable:  # and its name (and a new series' folder) before the Success
                sync_folder(self.folder)
                if new_folder:  # made or renamed in the work folder: its name on disk too
                    sync_folder(self.folder.parent)
                    self.renamed = False
        except OSError as exc:  # atomic_path named the file; its temporary is gone
            raise ImageNotStored(Path(exc.filename or target), exc) from None
        self.stored = held
        self.sizes[sop_uid] = size
        self.slices += frames - self.frames.get(sop_uid, 0)
        self.frames[sop_uid] = frames
        if self.arrived is not None:
            self.arrived.add(sop_uid)

    def _check_one_form(self, sop_uid: str, ds) -> None:
        """MixedSeries when ``ds`` (an image of SOP instance ``sop_uid``) and the images held
        would make the series a multi-frame file beside other images. Sent again, the same
        instance replaces its file and mixes nothing."""
        others = [sop for sop in self.sizes if sop != sop_uid]
        if not others:
            return
        if _is_multiframe(ds):
            raise MixedSeries(f"series {self.folder.name}: it is a multi-frame image of a series of which {len(others)} "
                              f"other image(s) are held; a series comes as one multi-frame file or as single-frame "
                              f"slices, not both")
        if holds_multiframe(self):
            raise MixedSeries(f"series {self.folder.name}: it is a slice of a series held as the multi-frame image "
                              f"{others[0]}; a series comes as one multi-frame file or as single-frame slices, "
                              f"not both")


    def _check_same_instance(self, sop_uid: str, ds) -> None:
        """DuplicateInstance when a slice comes with the SOP Instance UID of one held at another
        ImagePositionPatient: two images under one UID, of which the second would replace the
        first, and the series lose a slice without a word (the series reader refuses two files
        sharing a SOP Instance UID). The same slice sent again replaces its file, its position
        compared as numbers, as the readers compare slices: a sender may write one DS value
        differently each time (``-235.1999970`` and ``-235.199997``)."""
        if sop_uid not in self.sizes or _is_multiframe(ds):
            return
        import pydicom

        held = pydicom.dcmread(self.folder / f"{sop_uid}.dcm", stop_before_pixels=True,
                               specific_tags=["ImagePositionPatient"]).get("ImagePositionPatient")
        position = ds.get("ImagePositionPatient")
        if not same_value(held, position):
            raise DuplicateInstance(f"DICOM file {sop_uid}: SOPInstanceUID is that of an image of the series held already "
                                    f"at ImagePositionPatient {list(held or ())}; a DICOM SEG references each image by it, so the "
                                    f"series must name each once")


def _is_multiframe(ds) -> bool:
    return str(ds.get("SOPClassUID", "")) in ENHANCED_CT_CLASSES or int(ds.get("NumberOfFrames") or 1) > 1


def holds_multiframe(series: HeldSeries) -> bool:
    """True when ``series`` holds one image and it is a multi-frame one (an Enhanced CT file);
    its header is read from disk where its frame count does not tell (one frame; a series taken
    up from the work folder after a restart)."""
    if len(series.sizes) != 1:
        return False
    (sop,) = series.sizes
    if series.frames.get(sop, 1) > 1:
        return True
    import pydicom

    try:
        header = pydicom.dcmread(series.folder / f"{sop}.dcm", stop_before_pixels=True,
                                 specific_tags=["SOPClassUID", "NumberOfFrames"])
    except Exception:  # noqa: BLE001 - an unreadable file is read (and refused) with its series
        return False
    return _is_multiframe(header)


class SendingAssociations:
    """Which open association is sending which series: the series of the latest image each one
    stored. A series an association is sending is not complete, however long the association
    pauses (a scanner reconstructing, a busy network): it stops sending it when it sends an image
    of another series or ends (released, aborted, cut by --peer-timeout), and the series' idle time
    counts from then. An association is pynetdicom's (a thread, alive until it has ended); the
    methods are called under the node's lock, with its series in flight."""

    def __init__(self) -> None:
        self._series_of: dict[object, str] = {}

    def stored(self, assoc, series_uid: str, held: dict[str, HeldSeries], now: float) -> None:
        """``assoc`` stored an image of ``series_uid`` (held there by now)."""
        if self._series_of.get(assoc) != series_uid:
            self._end(assoc, held, now)
        self._series_of[assoc] = series_uid
        held[series_uid].senders.add(assoc)

    def ended(self, held: dict[str, HeldSeries], now: float) -> None:
        """Let go of the associations that have ended since the last call. Asked each time the
        series are checked rather than told by an event: an association can end while its C-STORE
        handler still runs, and its thread is alive until both are done."""
        for assoc in [a for a in self._series_of if not a.is_alive()]:
            self._end(assoc, held, now)

    def _end(self, assoc, held: dict[str, HeldSeries], now: float) -> None:
        series = held.get(self._series_of.pop(assoc, None))
        if series is not None and assoc in series.senders:
            series.senders.discard(assoc)
            series.last = max(series.last, now)


def absorb(into: HeldSeries, earlier: HeldSeries, series_uid: str) -> bool:
    """Move into ``into`` the images of ``earlier`` (the same series, segmented while ``into``
    was arriving) that it does not hold, so that the SEG of ``into`` is one of the whole series;
    then remove what is left of ``earlier``. True when the SEG of ``into`` is to replace the SEG of
    ``earlier``: it holds images of it (some were moved, or it holds them all already). False,
    nothing moved, when the whole would be past the volume limit, or when no image could be moved
    (the work folder changed under the node). Counts follow each image moved: one that cannot be
    moved is left out, and ``into`` counts exactly the files it holds."""
    added = [sop for sop in earlier.sizes if sop not in into.sizes]
    if added and (holds_multiframe(into) or holds_multiframe(earlier)):
        log.warning("series %s: the images segmented before are not segmented again with those received since: one "
                    "side is a multi-frame image, and a series comes as one multi-frame file or as single-frame slices, "
                    "not both", series_uid)
        shutil.rmtree(earlier.folder, ignore_errors=True)
        return False
    slices = into.slices + sum(earlier.frames[sop] for sop in added)
    stored = into.stored + sum(earlier.sizes[sop] for sop in added)
    try:
        check_series(slices, into.shape, stored, series_uid)
    except DataError as exc:
        log.warning("series %s: the images segmented before are not segmented again with those received since: "
                    "%s", series_uid, exc)
        shutil.rmtree(earlier.folder, ignore_errors=True)
        return False
    left = []
    for sop in added:
        try:
            os.rename(earlier.folder / f"{sop}.dcm", into.folder / f"{sop}.dcm")
        except OSError as exc:
            left.append(f"{sop} ({exc.strerror or exc})")
            continue
        into.sizes[sop], into.frames[sop] = earlier.sizes[sop], earlier.frames[sop]
        into.slices, into.stored = into.slices + earlier.frames[sop], into.stored + earlier.sizes[sop]
    if left:
        log.warning("series %s: %d of the %d images segmented before cannot be given to those received since and are "
                    "left out of its SEG: %s", series_uid, len(left), len(added), ", ".join(left[:3]))
    shutil.rmtree(earlier.folder, ignore_errors=True)
    return len(left) < len(added) or not added


def seg_path(series_uid: str, folder: Path) -> Path:
    """Where the SEG of ``series_uid`` goes in ``folder``: ``UID.seg.dcm``, or ``UID-N.seg.dcm``
    when the series was segmented before (images of it came after its first SEG): a SEG is never
    written over."""
    target, n = folder / f"{series_uid}.seg.dcm", 1
    while target.exists():
        n += 1
        target = folder / f"{series_uid}-{n}.seg.dcm"
    return target
