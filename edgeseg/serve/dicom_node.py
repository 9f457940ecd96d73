"""A DICOM node: C-STORE SCP that segments each CT series once it is complete.

Images arrive one C-STORE at a time and are written under a work folder, one sub-folder per
SeriesInstanceUID. A series counts as complete once no open association is sending it and
``idle`` seconds have passed since its last image or the end of the association that sent it
(dicom_series.py; images of it arriving after its SEG are segmented again with it into a SEG that
replaces that one: dicom_segmented.py); then one worker thread reads it with the DICOM reader, segments it with the
Segmenter, writes a DICOM SEG to ``out`` and/or sends it by C-STORE to the forward peer (one the
peer does not take waits in the unsent folder and is sent again: dicom_forward.py).
C-ECHO is answered. Images of other SOP classes (MR, US, ...) are answered with the failure
status 0x0122 "SOP class not supported": the association stays up, nothing is stored; a CT
image that is not CT or whose pixels cannot be decoded here is refused too (dicom_intake.py). An
image that would take its series past the readers' size limits (``edgeseg.limits``: pixels per
slice, float32 bytes per volume), or open one series more than ``max_series`` in flight, is
refused as it arrives with 0xA700 "out of resources"; so is one whose files would take its series
past the volume limit in bytes on disk. A series of which an image was refused, and not taken
since (sent again), is not segmented from the others: it fails (dicom_refused.RefusedImages). What a peer can make the node read and hold before the
C-STORE handler runs (a PDU, one image's data set) is bounded on its connection
(dicom_peer_bound.py): past that, the association is aborted; an Enhanced CT's data set (a
whole series) is received to a file, checked from it and linked into the work folder, never held
in memory whole (dicom_received.py). A peer that keeps the node waiting
(for its association request, the rest of a PDU, its next PDU, or to take an answer) longer than
``peer_timeout`` seconds has its connection cut (dicom_peer_watch.py). Connections are counted as
they are accepted, in all and per peer address, and their requests per calling AE title: one past
``max_connections``, ``max_connections_per_host`` or ``max_associations_per_ae`` is answered with an
A-ASSOCIATE-RJ "local limit exceeded" (dicom_connections.py, dicom_refusal.py).
An association must call this node by its AE title (else it is rejected with the reason "called
AE title not recognised") unless ``any_ae`` is set, and, where ``calling_aets`` lists AE titles,
come from one of them (else "calling AE title not recognised").
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from edgeseg.errors import DataError, EdgesegError
from edgeseg.limits import check_volume
from edgeseg.serve.audit import AssociationAudit
from edgeseg.serve.dicom_forward import Forwarder, Peer, UnsentFolder
from edgeseg.serve.dicom_intake import (CT_CLASSES, ENHANCED_CT_CLASSES, STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH,
                                        STATUS_OUT_OF_RESOURCES, STATUS_SOP_CLASS_NOT_SUPPORTED, STATUS_SUCCESS,
                                        check_ae_title, decodable_transfer_syntaxes, failure_status, incoming_uids, received_label,
                                        oversized_header, readable_series_uid, refusal, store_failure)
from edgeseg.serve.dicom_connections import ConnectionLimit
from edgeseg.serve.dicom_node_settings import (DEFAULT_MAX_ASSOCIATIONS, DEFAULT_MAX_ASSOCIATIONS_PER_AE,
                                               DEFAULT_KEEP_SEGMENTED, DEFAULT_MAX_CONNECTIONS,
                                               DEFAULT_MAX_CONNECTIONS_PER_HOST, DEFAULT_MAX_SERIES,
                                               DEFAULT_PEER_TIMEOUT, NodeStats, check_node_settings, per_host_limit)
from edgeseg.serve.dicom_node_events import NodeEvents
from edgeseg.serve.dicom_node_lifecycle import GuardedThread, NodeLifecycle
from edgeseg.serve.dicom_peer_watch import PeerWatch
from edgeseg.serve.dicom_segmented import SegmentedSeries, SegReference
from edgeseg.serve.dicom_received import pixel_data_bytes, read_received, received_path, write_failure
from edgeseg.serve.dicom_left_segs import left_segs, let_go_left
from edgeseg.serve.dicom_recovery import take_up
from edgeseg.serve.dicom_refused import RefusedImages
from edgeseg.serve.dicom_series import DuplicateInstance, HeldSeries, ImageNotStored, MixedSeries, SendingAssociations
from edgeseg.serve.dicom_work import WorkClaim

__all__ = ["DicomNode", "NodeStats", "Peer", "check_ae_title", "check_node_settings", "decodable_transfer_syntaxes"]

log = logging.getLogger("edgeseg.listen")


class DicomNode(NodeEvents, NodeLifecycle):
    """The C-STORE SCP; ``start()`` listens in the background, ``stop()`` shuts it down
    (dicom_node_lifecycle.py)."""

    def __init__(self, segmenter, *, ae_title: str = "EDGESEG", host: str = "127.0.0.1", port: int = 11112,
                 out: str | Path | None = None, forward: Peer | None = None, idle: float = 5.0,
                 work: str | Path | None = None, any_ae: bool = False, calling_aets: list[str] | None = None,
                 max_series: int = DEFAULT_MAX_SERIES, unsent: str | Path | None = None,
                 resend_every: float = 60.0, peer_timeout: float = DEFAULT_PEER_TIMEOUT,
                 max_associations: int = DEFAULT_MAX_ASSOCIATIONS, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_host: int | None = DEFAULT_MAX_CONNECTIONS_PER_HOST,
                 max_associations_per_ae: int | None = DEFAULT_MAX_ASSOCIATIONS_PER_AE, audit=None,
                 keep_segmented: float = DEFAULT_KEEP_SEGMENTED, durable: bool = False) -> None:
        check_node_settings(out=out, forward=forward, unsent=unsent, max_series=max_series, ae_title=ae_title,
                            calling_aets=calling_aets, peer_timeout=peer_timeout, max_associations=max_associations,
                            max_connections=max_connections, max_connections_per_host=max_connections_per_host,
                            max_associations_per_ae=max_associations_per_ae, keep_segmented=keep_segmented, work=work)
        self.peer_timeout, self.max_associations = float(peer_timeout), max_associations
        self.any_ae = bool(any_ae)
        self.calling_aets = [title.strip() for title in calling_aets or []]
        self.segmenter = segmenter
        # ``audit``: an edgeseg.serve.audit.AuditLog, given a line per association, series and refusal
        self.audit = None if audit is None else AssociationAudit(audit)
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.out, self.forward = Path(out) if out is not None else None, forward
        self.idle, self.max_series = float(idle), max_series
        # where a SEG the peer did not take waits to be sent again (beside --out unless given)
        self.unsent = None if forward is None else UnsentFolder(Path(unsent) if unsent is not None
                                                                 else self.out / "unsent")
        self.resend_every = float(resend_every)
        if durable and work is None:
            raise DataError("a durable work folder must be named (--work DIR)")
        self._own_work = work is None
        made = None  # the folder made here, removed again if the making of the node ends short
        try:
            if work is None:
                made = tempfile.mkdtemp(prefix="edgeseg-listen-")
            self.work = Path(work) if work is not None else Path(made)
            # durable: the folder is this node's alone while it runs, each image is on disk before its
            # Success, and what a node killed outright left in it is taken up again (dicom_work.py)
            self._claim = WorkClaim(self.work) if durable else None
            self.stats = NodeStats()
            self._forwarder = None if forward is None else Forwarder(forward, ae_title, self.unsent, resend_every,
                                                                     self.stats)
            self._connections = ConnectionLimit(max_connections,
                                                per_host_limit(max_connections_per_host, max_associations), self.stats,
                                                per_host_limit(max_associations_per_ae, max_associations), audit)
            self._series: dict[str, HeldSeries] = {}
            self._sending = SendingAssociations()  # an open association's series is not complete
            self._segmented = SegmentedSeries(self.work, keep_segmented, durable)
            self._queued = 0  # series taken to be segmented and not done yet: they are in flight too
            self._turned_away: set[str] = set()  # series refused for --max-series, each logged once
            self._refused = RefusedImages()  # a series with an image refused is not segmented without it
            self._taken = 0  # series folders moved aside to be segmented, for unique names
            self._lock = threading.Lock()
            self._stop = threading.Event()
            # set as the stop begins, without the lock (a write holding it must not hold up closing the
            # port); read under the lock: no image is stored from then on
            self._closing = threading.Event()
            self._abandon = threading.Event()
            self._server = None
            self._receiving = False  # holds pynetdicom's receiving to files (start to stop)
            self._peers = PeerWatch(self.peer_timeout, self._on_peer_timed_out)
            self._worker = GuardedThread(self._watch, "edgeseg-listen")
            self._accept: GuardedThread | None = None  # the accept loop's (dicom_node_lifecycle.py)
            if durable:
                take_up(self.work, self._claim.previous, self._series, self._segmented, self.audit)
                if self._forwarder is not None:  # a SEG in it was neither sent nor kept before (stranded, or killed)
                    self._forwarder.stranded = [(seg, True) for seg in left_segs(self.work, self._series)]
                self._refused = RefusedImages.kept_in(self.work, held=self._series)  # and kept there on
        except BaseException:  # an error, or an interrupt (a signal during the start): no folder left behind
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
            raise

    def _on_store(self, event) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class not in CT_CLASSES:
            self.stats.refused += 1
            log.warning("refused an image of SOP class %s: only CT and Enhanced CT images are segmented", sop_class)
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        context_class = str(event.context.abstract_syntax)
        if context_class != sop_class:  # before its data set is touched: it is decoded in the context's syntax
            self.stats.refused += 1
            log.warning("refused an image sent as %s on a presentation context for %s; its data set is not read",
                        sop_class, context_class)
            return failure_status(STATUS_DATASET_MISMATCH, f"SOP class {sop_class} is not its context's", "")
        received = received_path(event)  # an Enhanced CT's data set in a file (dicom_received.py); else None: in memory
        unwritten = write_failure(received)
        if unwritten is not None:  # the disk had no room for it: the rest was dropped, the file removed
            self.stats.refused += 1
            sop_uid = str(event.request.AffectedSOPInstanceUID)
            log.error("refused image %s: cannot receive it into %s: %s", sop_uid, received.parent, unwritten)
            return failure_status(STATUS_OUT_OF_RESOURCES, f"cannot receive it: {unwritten}", sop_uid)
        ds = None
        try:
            if received is None:
                ds, encoded = event.dataset, event.request.DataSet.getbuffer().nbytes
            else:
                ds, encoded = read_received(received)
            ds.file_meta = event.file_meta
            series_uid, sop_uid = incoming_uids(ds)
        except DataError as exc:
            self.stats.refused += 1
            log.warning("refused an image: %s", exc)
            self._note_refused(readable_series_uid(ds), None, str(exc))
            return failure_status(STATUS_DATASET_MISMATCH, str(exc), received_label(ds) if ds is not None else "")
        except Exception as exc:  # a dataset pydicom cannot decode or without its UIDs
            log.warning("could not read an incoming image: %s", exc)
            return failure_status(STATUS_CANNOT_UNDERSTAND, f"it cannot be read: {exc}", "")
        padded = oversized_header(encoded, pixel_data_bytes(ds, received))
        if padded is not None:
            self.stats.refused += 1
            log.warning("refused image %s of series %s: %s", sop_uid, series_uid, padded)
            self._note_refused(series_uid, sop_uid, padded)
            return failure_status(STATUS_OUT_OF_RESOURCES, padded, sop_uid)
        try:
            frames, rows, columns = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
        except Exception as exc:  # no Rows/Columns, or a NumberOfFrames that is no number
            log.warning("could not read the size of an incoming image: %s", exc)
            self._note_refused(series_uid, sop_uid, f"its size cannot be read: {exc}")
            return failure_status(STATUS_CANNOT_UNDERSTAND, f"its size cannot be read: {exc}", sop_uid)
        try:  # the image alone, before its pixels are decoded below
            check_volume((frames, rows, columns), f"series {series_uid}")
        except DataError as exc:
            self.stats.refused += 1
            log.warning("refused an image: %s", exc)
            self._note_refused(series_uid, sop_uid, str(exc))
            return failure_status(STATUS_OUT_OF_RESOURCES, str(exc), sop_uid)
        refused = refusal(ds, context_class, received)
        if refused is not None:
            self.stats.refused += 1
            log.warning("refused image %s of series %s: %s", sop_uid, series_uid, refused[1])
            self._note_refused(series_uid, sop_uid, refused[1])
            return failure_status(*refused, sop_uid)
        # All under the node's lock, the write and its flushes too: segmenting, merging late images
        # (dicom_segmented.absorb) and the stop's taking of every series then never meet a write in flight.
        with self._lock:
            if self._closing.is_set():  # the stop has taken the series received: this image would be segmented by none
                self.stats.refused += 1
                log.warning("refused image %s of series %s: the node is stopping", sop_uid, series_uid)
                return failure_status(STATUS_OUT_OF_RESOURCES, "the node is stopping; send it again", sop_uid)
            series = self._series.get(series_uid)
            if series is None and len(self._series) + self._queued >= self.max_series:
                # each series in flight holds up to the volume limit on disk: the bound keeps a
                # peer opening series after series from filling the work folder's disk
                self.stats.refused += 1
                self._refused.refused(series_uid, sop_uid, f"{self.max_series} series were in flight (--max-series)",
                                      self._series)
                if series_uid not in self._turned_away and len(self._turned_away) < 10_000:
                    self._turned_away.add(series_uid)
                    log.warning("refused the images of series %s: %d series are in flight, the most --max-series "
                                "allows; they are taken again once one is segmented", series_uid, self.max_series)
                return failure_status(STATUS_OUT_OF_RESOURCES, f"{self.max_series} series are in flight "
                                      "(--max-series); send it again later", sop_uid)
            if series is None:  # images of a series segmented before are segmented again with it (dicom_segmented.py)
                series = (self._segmented.resume(series_uid, self.work / series_uid)
                          or HeldSeries(self.work / series_uid, time.monotonic(), durable=self._claim is not None))
                series.opening = True  # holds its slot from now on; given up if no image of it is stored
                self._series[series_uid] = series
            series.writers += 1
            try:
                with series.lock:
                    # the reader's limits, checked as images arrive: the whole series would otherwise be
                    # stored first (a peer could fill the disk) and only then be refused when it is read
                    series.check_pixels(sop_uid, frames, rows, columns)
                    # and its bytes on disk: an Enhanced CT as it came, the file received linked in
                    series.keep(sop_uid, ds, frames, received if sop_class in ENHANCED_CT_CLASSES else None)
            except Exception as exc:  # DataError: refused; ImageNotStored: the node's own failure, an error
                self._written(series_uid, series, stored=False)
                if not isinstance(exc, DataError):  # answered 0xC211: the series is not segmented without it either
                    self._refused.refused(series_uid, sop_uid, f"the node failed storing it: {type(exc).__name__}: "
                                          f"{exc}", self._series)
                    raise
                self.stats.refused += 1
                log.log(logging.ERROR if isinstance(exc, ImageNotStored) else logging.WARNING,
                        "refused image %s: %s", sop_uid, exc)
                if not isinstance(exc, MixedSeries):  # the other form of a whole series: it misses no slice of it
                    self._refused.refused(series_uid, None if isinstance(exc, DuplicateInstance) else sop_uid,
                                          str(exc), self._series)
                return store_failure(exc, sop_uid)
            self._written(series_uid, series, stored=True)
            self._refused.taken(series_uid, sop_uid, whole=sop_class in ENHANCED_CT_CLASSES)
            series.last = time.monotonic()
            self._sending.stored(event.assoc, series_uid, self._series, series.last)
        self.stats.received += 1
        return STATUS_SUCCESS

    def _note_refused(self, series_uid: str | None, sop_uid: str | None, reason: str) -> None:
        """An image of ``series_uid`` (None: not known) was refused: the series is not segmented
        without it (RefusedImages)."""
        if series_uid is not None:
            with self._lock:
                self._refused.refused(series_uid, sop_uid, reason, self._series)

    def _written(self, series_uid: str, series: HeldSeries, stored: bool) -> None:
        """An image written into ``series`` (under the node's lock): the first stored makes it in
        flight; with none stored and no other writer, it gives up its slot (kept again if resumed)."""
        series.writers -= 1
        if stored and series.opening:
            series.opening = False
            self._segmented.resumed(series_uid, stored=True)
            self._turned_away.discard(series_uid)
            # the series kept take the room of series in flight, the oldest first; only for an
            # image stored: one refused takes no room
            self._segmented.expire(time.monotonic(), len(self._series) + self._queued + len(self._segmented)
                                   - self.max_series)
        elif not stored and series.opening and not series.writers:
            if self._segmented.resumed(series_uid, stored=False):
                del self._series[series_uid]
            elif not series.frames:
                del self._series[series_uid]
                shutil.rmtree(series.folder, ignore_errors=True)
            else:  # given the images of a SEG made meanwhile (dicom_segmented.absorb): in flight with them
                series.opening = False

    def _due(self, everything: bool = False) -> list[tuple[str, HeldSeries]]:
        """The complete series (``everything``: all; HeldSeries.complete), taken out of the waiting
        list with their folder moved aside under the lock: an image of the same series arriving
        while one is segmented starts a new folder instead of landing in (and being removed with)
        the one being read."""
        now = time.monotonic()
        with self._lock:
            self._sending.ended(self._series, now)
            self._segmented.expire(now)
            due = [(uid, s) for uid, s in self._series.items() if everything or s.complete(self.idle, now)]
            for uid, series in due:
                del self._series[uid]
                series.refused = self._refused.outstanding(uid, series.frames, now, self._series)
                self._taken += 1
                taken = series.folder.with_name(f"{series.folder.name}.taken-{self._taken}")
                os.rename(series.folder, taken)
                series.folder = taken
                self._queued += 1  # until _segment is done with it
        return due

    def _watch(self) -> None:
        waiting = self.unsent.pending() if self.unsent is not None else []
        if waiting:
            log.warning("%d SEG(s) not forwarded before wait in %s; sending them to %s", len(waiting),
                        self.unsent.folder, self.forward)
        next_resend = time.monotonic()  # SEGs left by an earlier run go out first
        while not self._stop.wait(0.1):
            try:
                self._segment(self._due())
                if self.unsent is not None and time.monotonic() >= next_resend:
                    next_resend = time.monotonic() + self.resend_every
                    self._forwarder.resend()
            except Exception:  # the worker must outlive any one failure (a rename refused, ...)
                log.exception("the segmenting worker hit an error; it goes on")
        # stopping: the images received and acknowledged are segmented, not dropped with the work folder
        waiting = self._due(everything=True)
        if waiting:
            log.info("stopping: segmenting the %d series received and not yet segmented", len(waiting))
        self._segment(waiting)
        if self._claim is None:  # in a --work folder they are taken up again by the next start
            with self._lock:
                self._segmented.clear()
        left = self.unsent.pending() if self.unsent is not None else []
        if left:
            log.warning("%d SEG(s) not forwarded to %s are kept in %s; the next start sends them", len(left),
                        self.forward, self.unsent.folder)
        if self._forwarder is not None and self._forwarder.stranded:  # the stop keeps them (dicom_node_lifecycle.py)
            self._forwarder.keep_stranded()
            stranded = [str(seg) for seg, _ in self._forwarder.stranded]
            if stranded:
                log.error("%d SEG(s) not forwarded to %s could not be kept in %s either; they stay in %s: move them "
                          "into it and the next start sends them", len(stranded), self.forward, self.unsent.folder,
                          ", ".join(stranded))

    def _segment(self, due: list[tuple[str, HeldSeries]]) -> None:
        for uid, series in due:
            began, error, forced = time.monotonic(), None, self._abandon.is_set()
            try:
                if forced:  # a second Ctrl-C / SIGTERM during the stop: segment no more
                    # a failure like any other, audited too: its images were acknowledged to the peer
                    raise DataError("the stop was forced" + ("" if self._claim is None else
                                                              f"; its images stay in {self.work} for the next start"))
                if series.refused is not None:  # a SEG of the others would miss the slices refused
                    raise DataError(series.refused)
                self.process(uid, series.folder, series.replaces, series.arrived, series.left)
            except (EdgesegError, OSError) as exc:  # OSError: --out full, gone, turned into a file, ...
                error = str(exc)
                log.error("series %s (%d images) not segmented: %s", uid, len(series.frames), exc)
            except Exception as exc:  # keep serving the next series whatever one series does
                error = f"{type(exc).__name__}: {exc}"
                log.exception("series %s failed: %s", uid, exc)
            finally:
                try:
                    if self.audit is not None and error is not None:
                        self.audit.series(uid, time.monotonic() - began, error=error)
                    with self._lock:  # its images are kept a while, or given to a part arriving since
                        self._queued -= 1
                        if self._claim is None or not forced:  # else left for the next start
                            self._segmented.keep(uid, series, time.monotonic(), self._series.get(uid))
                finally:  # counted last: whoever watches the count sees the failure audited and kept
                    if error is not None and series.left and not (forced and self._claim is not None):
                        let_go_left(self, uid, series.left, set())  # replaced by none: sent as they are
                    if error is not None:
                        self.stats.failed.append(uid)

    def process(self, series_uid: str, folder: Path, replaces: tuple[SegReference, ...] | None = None,
                arrived: set[str] | None = None, left: tuple[SegReference, ...] = ()) -> Path | None:
        """Segment the series in ``folder``; write and/or forward its SEG; return the SEG path.
        A series holding several volumes gets one SEG per volume (:mod:`edgeseg.serve.dicom_volume_segs`);
        the last one's path is returned. Of a series segmented before into ``replaces`` (images of it
        came after them; ``arrived``: those stored since, None where not known), each volume's SEG
        goes into the series of that volume's earlier SEG with the next Instance Number, in a file
        beside it (``UID-2.seg.dcm`` and so on): no SEG is written over; a volume no image joined keeps
        its SEG (:mod:`edgeseg.serve.dicom_volume_match`), and None is returned where every volume does.
        ``left``: SEGs of it an earlier node left in the work folder (dicom_left_segs.py)."""
        from edgeseg.serve.dicom_volume_segs import segment_series

        return segment_series(self, series_uid, folder, replaces, arrived, left)
