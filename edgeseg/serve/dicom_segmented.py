"""The series the DICOM node has segmented, kept with their images for a while, so that images of
one that arrive late (a sender pausing longer than --idle between associations, a router sending
the rest of a series in a later burst) are segmented with the rest of the series, into SEGs that
replace the first ones (one per volume: dicom_volume_match.py), instead of into a SEG of the late
images alone.

A kept series takes the place of a series in flight against --max-series: one is given up, oldest
first, when a new series needs the room (once its first image is stored), so the work folder never
holds more than --max-series series' images, and each is given up ``keep_for`` seconds after its
SEG was made."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgeseg.errors import DataError
from edgeseg.serve.dicom_series import HeldSeries, absorb
from edgeseg.serve.dicom_seg_notes import save_reference

log = logging.getLogger("edgeseg.listen")
UNKNOWN_BUNDLE = "unknown"  # no sha256 begins so: the SEG is another bundle's to any bundle


@dataclass(frozen=True)
class SegReference:
    """What the node needs of a SEG it made to make the one that replaces it: the SEG goes into
    the same series with the next Instance Number, and the log and audit line name the one it
    replaces. ``bundle``: the sha256 of the manifest of the bundle that made it ("" where not
    known: a ``.seg.json`` written before it was noted), or of a SEG read back the part of it
    its Content Description holds (:data:`UNKNOWN_BUNDLE` where it holds none: another
    bundle's, dicom_left_segs.py). ``images``: the SOP Instance UIDs of the
    images it references, which tell the volume of the series it was made of (() where not known:
    a ``.seg.json`` written before they were noted)."""

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int
    file: str
    slices: int
    bundle: str = ""
    images: tuple[str, ...] = ()

    @classmethod
    def noted(cls, fields: dict) -> "SegReference":
        """The SegReference of its note's ``fields`` (dicom_seg_notes.py, which checked them)."""
        return cls(**{**fields, "images": tuple(fields.get("images", ()))})

    @classmethod
    def read(cls, path: Path, slices: int, bundle: str = "", images=()) -> "SegReference":
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True,
                             specific_tags=["SOPInstanceUID", "SeriesInstanceUID", "InstanceNumber"])
        return cls(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), int(ds.get("InstanceNumber") or 1),
                   path.name, slices, bundle, tuple(sorted(images)))

    def made_by(self, series_uid: str, bundle: str) -> "SegReference | None":
        """This SEG, to be replaced by one the bundle ``bundle`` (its manifest's sha256) makes; None,
        logged, when another bundle made it (a node restarted with another model): a SEG of one
        model does not become the next instance of another model's SEG series."""
        if not self.bundle or not bundle or bundle.startswith(self.bundle):  # a SEG read back names a prefix
            return self
        log.warning("series %s: %s was made by another bundle (manifest sha256 %s, this one %s); the SEG of its images "
                    "and those arriving now starts a SEG series of its own", series_uid, self.file, self.bundle[:12],
                    bundle[:12])
        return None


@dataclass
class _Kept:
    series: HeldSeries
    segs: tuple[SegReference, ...]
    until: float


class SegmentedSeries:
    """The segmented series kept, by Series Instance UID; called under the node's lock."""

    def __init__(self, work: Path, keep_for: float, durable: bool = False) -> None:
        self.work, self.keep_for, self.durable = Path(work), float(keep_for), durable
        self._kept: dict[str, _Kept] = {}
        self._made: dict[str, tuple[SegReference, ...]] = {}
        self._resumed: dict[str, _Kept] = {}  # taken up by resume(), until its first image is stored

    def __len__(self) -> int:
        return len(self._kept)

    def made(self, series_uid: str, segs: tuple[SegReference, ...]) -> None:
        """``segs``, one per volume, are the SEGs of ``series_uid`` now (made, or standing as they
        were); :meth:`keep` keeps its images with them."""
        self._made[series_uid] = tuple(segs)

    def keep(self, series_uid: str, series: HeldSeries, now: float, in_flight: HeldSeries | None) -> None:
        """Keep the images of ``series``, whose SEG was just made, for ``keep_for`` seconds; or
        give them to ``in_flight``, the images of the same series that arrived while it was
        segmented, which then make a SEG of the whole series in place of that one. Removed
        instead when nothing is kept, no SEG was made (it failed), or the whole series would be
        past the volume limit."""
        segs = self._made.pop(series_uid, None)
        self._give_up(series_uid)
        if segs is None or self.keep_for <= 0:
            shutil.rmtree(series.folder, ignore_errors=True)
        elif in_flight is not None:
            with in_flight.lock:  # an association may be writing an image into it (dicom_node.py)
                moved = absorb(in_flight, series, series_uid)
            if moved:  # the images moved, all or some, go into its SEGs; those it received are the late ones
                in_flight.replaces = segs
                self._remember(in_flight.folder, segs, self.keep_for)
        else:
            shutil.rmtree(self.work / f"{series_uid}.segmented", ignore_errors=True)
            if _move(series, self.work / f"{series_uid}.segmented", series_uid, "be kept", "images of it arriving "
                     "later make a SEG of their own"):
                series.senders = set()
                self._kept[series_uid] = _Kept(series, segs, now + self.keep_for)
                self._remember(series.folder, segs, self.keep_for)

    def _remember(self, folder: Path, segs: tuple[SegReference, ...], keep_for: float) -> None:
        """In a work folder a later node takes up (--work), the SEGs the images in ``folder`` were
        segmented into, and until when they are kept, go beside them (dicom_seg_notes.py)."""
        if self.durable:
            try:
                save_reference(folder, list(segs), time.time() + keep_for)
            except (OSError, DataError) as exc:
                log.warning("the SEG made of the images in %s cannot be noted beside them (%s); a node taking them "
                            "up after a restart makes a SEG of its own", folder, exc)

    def adopt(self, series_uid: str, series: HeldSeries, segs: tuple[SegReference, ...], keep_for: float,
              now: float) -> None:
        """Keep ``series``, found in the work folder at start with the SEGs it was segmented into,
        for the ``keep_for`` seconds it had left."""
        self._kept[series_uid] = _Kept(series, tuple(segs), now + keep_for)

    def resume(self, series_uid: str, folder: Path) -> HeldSeries | None:
        """The kept images of ``series_uid``, moved to ``folder`` to be segmented again with the
        images arriving now (``replaces``: the SEGs made of them; ``arrived``: none yet), or None."""
        kept = self._kept.pop(series_uid, None)
        if kept is None:
            return None
        if not _move(kept.series, folder, series_uid, "be taken up again",
                     "the images arriving now make a SEG of their own"):
            return None
        self._resumed[series_uid] = kept
        kept.series.replaces, kept.series.arrived = kept.segs, set()
        kept.series.renamed = self.durable  # UID.segmented is UID now: flushed with the next image stored
        log.info("series %s was segmented before (%s, %d slices): the images arriving now are segmented with "
                 "its images, into %s", series_uid, ", ".join(seg.file for seg in kept.segs),
                 sum(seg.slices for seg in kept.segs), "a SEG that replaces that one" if len(kept.segs) == 1 else
                 "a SEG per volume that replaces that volume's")
        return kept.series

    def resumed(self, series_uid: str, stored: bool) -> bool:
        """The first image arriving for a series :meth:`resume` took up was ``stored``: the series
        is in flight from now on; or it was refused (the volume limit, the disk), and the series
        goes back to being kept, with the SEG it replaces and its time, as if the image had never
        come: giving it up would leave the next late images a SEG of their own. True when
        :meth:`resume` had taken it up."""
        kept = self._resumed.pop(series_uid, None)
        if kept is None or stored:
            return kept is not None
        if _move(kept.series, self.work / f"{series_uid}.segmented", series_uid, "be kept again",
                 "images of it arriving later make a SEG of their own"):
            self._kept[series_uid] = kept
        return True

    def expire(self, now: float, room_for: int = 0) -> None:
        """Give up the series kept past their time, then the oldest until ``room_for`` fewer are
        kept than there were (room for series in flight)."""
        for uid in [uid for uid, kept in self._kept.items() if kept.until <= now]:
            self._give_up(uid)
        for uid in sorted(self._kept, key=lambda uid: self._kept[uid].until)[:max(0, room_for)]:
            self._give_up(uid)

    def clear(self) -> None:
        for uid in list(self._kept):
            self._give_up(uid)

    def _give_up(self, series_uid: str) -> None:
        kept = self._kept.pop(series_uid, None)
        if kept is not None:
            shutil.rmtree(kept.series.folder, ignore_errors=True)


def _move(series: HeldSeries, folder: Path, series_uid: str, what: str, then: str) -> bool:
    """Rename the folder of ``series`` to ``folder``; False, logged and its images removed, when
    the work folder changed under the node."""
    try:
        os.rename(series.folder, folder)
    except OSError as exc:
        log.warning("series %s: its images cannot %s (%s); %s", series_uid, what, exc.strerror or exc, then)
        shutil.rmtree(series.folder, ignore_errors=True)
        return False
    series.folder = folder
    return True
