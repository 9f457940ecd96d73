"""Sending the DICOM node's SEGs to the forward peer, and keeping those it did not take.

A SEG the peer does not take (down, unreachable, refusing the association or the C-STORE, or a
fault in the sending itself) goes to the unsent folder and is sent again later: at the next
forward that succeeds, every ``resend_every`` seconds, and at the next start of the node. It
leaves the folder only once the peer has answered its C-STORE with Success, so a SEG is never lost
to a peer's outage. One that cannot be kept there either (the folder cannot be written) stays
where it was made and is tried again at each round (:attr:`Forwarder.stranded`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from edgeseg.atomic import atomic_path
from edgeseg.errors import DataError, EdgesegError, require
from edgeseg.serve.dicom_identity import identify
from edgeseg.serve.dicom_intake import SEGMENTATION_STORAGE, STATUS_SUCCESS, check_ae_title

log = logging.getLogger("edgeseg.listen")

# Explicit VR Little Endian, Implicit VR Little Endian, Deflated Explicit VR Little Endian
FORWARD_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity to send results to."""

    host: str
    port: int
    ae_title: str
    # Seconds to wait for the TCP connection. pynetdicom's default is none, so a host that drops
    # the connection attempt held the segmenting worker for the OS's ~2 minutes on every series.
    connect_timeout: float = 10.0

    @classmethod
    def parse(cls, text: str) -> "Peer":
        """``HOST:PORT:AET`` -> Peer; DataError for anything else."""
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2] or not parts[0]:
            raise DataError(f"--forward must be HOST:PORT:AET, got {text!r}")
        if not 1 <= int(parts[1]) <= 65535:
            raise DataError(f"--forward {text!r}: port must be 1..65535")
        try:  # checked now: else every series would fail to be forwarded, one by one
            check_ae_title(parts[2])
        except DataError as exc:
            raise DataError(f"--forward {text!r}: {exc}") from None
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class SegRefused(DataError):
    """The peer was reached and answered the C-STORE of one SEG with a failure status."""


class SegUnreadable(DataError):
    """The SEG file cannot be read (not DICOM, cut short, unreadable): no peer could take it."""


def send_seg(peer: Peer, calling_ae: str, path: Path) -> None:
    """C-STORE the SEG file ``path`` to ``peer``; DataError naming the peer unless it stored it
    (Success, or a Warning: :func:`stored`)."""
    pynetdicom = require("pynetdicom", "dicom", "forwarding DICOM SEG")
    pydicom = require("pydicom", "io", "forwarding DICOM SEG")
    try:  # read before associating: a file no peer could take must not look like the peer's failure
        dataset = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError, ValueError, EOFError) as exc:
        raise SegUnreadable(f"{path} cannot be read as DICOM: {exc}"[:300]) from None
    ae = pynetdicom.AE(ae_title=calling_ae)
    identify(ae)
    ae.connection_timeout = peer.connect_timeout
    # The SEG file is Explicit VR Little Endian; pynetdicom sends it in that, Implicit VR Little
    # Endian or Deflated, not in Explicit VR Big Endian (its default fourth): a peer accepting only
    # that had the association made and the C-STORE fail with pynetdicom's ValueError.
    ae.add_requested_context(SEGMENTATION_STORAGE, FORWARD_SYNTAXES)
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    except OSError as exc:  # a host name that does not resolve, ...
        raise DataError(f"could not associate with {peer}: {exc.strerror or exc}") from None
    if not assoc.is_established:
        raise DataError(f"could not associate with {peer}")
    try:
        status = assoc.send_c_store(dataset)
    except BaseException:  # the C-STORE's failure is the one told, not a release failing after it
        with contextlib.suppress(Exception):
            assoc.release()
        raise
    try:
        assoc.release()
    except Exception as exc:  # the peer answered the C-STORE: its answer stands (a SEG it stored is not sent again)
        log.warning("releasing the association with %s after the C-STORE of %s failed: %s", peer, path.name, exc)
    code = getattr(status, "Status", None)
    if code is None:  # pynetdicom's empty answer: the association ended or timed out first
        raise DataError(f"{peer} did not answer the C-STORE of the SEG (association aborted or timed out)")
    if not stored(int(code)):
        raise SegRefused(f"{peer} answered the C-STORE of the SEG with status 0x{int(code):04X}")
    if code != STATUS_SUCCESS:
        log.warning("%s stored the SEG %s with the warning status 0x%04X", peer, path.name, int(code))


def stored(status: int) -> bool:
    """Whether a C-STORE answered with ``status`` stored the instance: Success, or a Warning
    (PS3.4 B.2.3: B000 coercion of data elements, B007 data set does not match SOP class, B006
    elements discarded; PS3.7 C.4: 0001, 0107, 0116), the instance kept with a remark. Counted as a
    failure, a SEG the peer had stored waited in the unsent folder and was sent again, and stored
    again, every ``--resend-every`` seconds for good."""
    return status == STATUS_SUCCESS or 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116)


class UnsentFolder:
    """The folder of SEGs the forward peer has not taken yet, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def pending(self) -> list[Path]:
        """The SEGs waiting, oldest first (a staging file of an interrupted keep is not one; one
        removed by hand meanwhile is passed over, not an error that ends the round)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob("*.seg.dcm"):
            try:
                info = path.stat()
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and not path.name.startswith("."):
                found.append((info.st_mtime, path.name, path))
        return [path for *_, path in sorted(found)]

    def keep(self, seg: Path) -> Path:
        """Copy ``seg`` in (a hard link where the file system allows: the SEG is then on disk
        once), under a name no SEG waiting has; return its path there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = seg.name.removesuffix(".seg.dcm")
        target, n = self.folder / seg.name, 1
        while target.exists():
            n += 1
            target = self.folder / f"{stem}~{n}.seg.dcm"
        try:
            os.link(seg, target)
        except OSError:  # another file system, or one without hard links
            with atomic_path(target, suffix=".dcm") as tmp:
                shutil.copyfile(seg, tmp)
        return target

    def resend(self, send) -> tuple[int, Exception | None]:
        """Send the SEGs waiting with ``send(path)``, oldest first, removing each the peer took;
        return how many were sent and the last failure, if any (:func:`send_in_turn`)."""
        return send_in_turn(self.pending(), send, lambda path: path.unlink(missing_ok=True))


def send_in_turn(paths: list[Path], send, sent) -> tuple[int, Exception | None]:
    """``send(path)`` each of ``paths`` in turn, calling ``sent(path)`` for each the peer took. A
    SEG the peer refuses, a file that cannot be read, or a fault in the sending (an exception that
    is no EdgesegError: one SEG may be all it fails on) stays and the next one is tried: one SEG
    the peer will not take must not hold up the others. Any other failure ends the round (the
    peer is still away: the others would fail the same way). Return how many were sent and the
    last failure, if any."""
    count, failure = 0, None
    for path in paths:
        try:
            send(path)
        except (SegRefused, SegUnreadable) as exc:
            failure = exc
            continue
        except EdgesegError as exc:
            return count, exc
        except Exception as exc:
            failure = exc
            continue
        sent(path)
        count += 1
    return count, failure


class Forwarder:
    """Sends each SEG the node makes to the forward peer; one the peer does not take waits in the
    unsent folder and is sent again every ``resend_every`` seconds, and at once after a SEG goes
    through (the peer is back). ``stats`` (the node's NodeStats) counts what was and was not sent.
    ``stranded``: the SEGs neither sent nor kept in the unsent folder (it could not be written), each
    with whether it is the node's own copy (in its work folder, no --out: removed once kept or
    sent); each round keeps them in the unsent folder where it can, else sends them from there."""

    def __init__(self, peer: Peer, calling_ae: str, unsent: UnsentFolder, resend_every: float, stats,
                 stranded: list[tuple[Path, bool]] | None = None) -> None:
        self.peer, self.calling_ae, self.unsent = peer, calling_ae, unsent
        self.resend_every, self.stats = float(resend_every), stats
        self.stranded = list(stranded or [])

    def forward(self, series_uid: str, seg: Path, own: bool) -> bool:
        """Send ``seg``; one the peer does not take, whatever the failure, waits in the unsent
        folder. Return whether ``seg`` may now be removed (``own``: the node's copy in its work
        folder; a --out copy stays anyway): False for a SEG kept nowhere else, which stays where it is,
        named in the error line, and is tried again at each round."""
        try:
            self._send(seg)
        except Exception as exc:  # EdgesegError: the peer's doing; any other: a fault, logged with its traceback
            trace = None if isinstance(exc, EdgesegError) else exc
            cause = exc if trace is None else f"{type(exc).__name__}: {exc}"
            try:
                kept = f"it waits in {self.unsent.keep(seg)} and is sent again every {self.resend_every:g} s"
            except OSError as keep_exc:
                self.stranded.append((seg, own))
                log.error("series %s: SEG not forwarded: %s; it could not be kept in %s (%s): it stays in %s and is "
                          "tried again every %g s", series_uid, cause, self.unsent.folder,
                          keep_exc.strerror or keep_exc, seg, self.resend_every, exc_info=trace)
                self.stats.not_forwarded.append(seg.name)  # counted last: whoever watches it finds the SEG where told
                return False
            log.error("series %s: SEG not forwarded: %s; %s", series_uid, cause, kept, exc_info=trace)
            self.stats.not_forwarded.append(seg.name)
            return True
        self.resend()  # the peer is back: what it missed before goes now, not at the next round
        return True

    def resend(self) -> None:
        """Send the stranded SEGs, then those waiting in the unsent folder, in one round that ends
        at the first failure telling the peer is away (:func:`send_in_turn`: one association
        tried, not one per list), logging what is left. A fault here is logged, never raised: it
        is neither the failure of the SEG forwarded before it nor the segmenting worker's."""
        try:
            self.keep_stranded()
            stranded = {item[0]: item for item in self.stranded}
            waiting = list(stranded) + self.unsent.pending()
            if not waiting:
                return
            sent, exc = send_in_turn(waiting, self._send, lambda seg: self._let_go(stranded[seg]) if seg in stranded
                                     else seg.unlink(missing_ok=True))
        except Exception:
            log.exception("resending the SEGs waiting in %s failed; they stay there", self.unsent.folder)
            return
        if exc is not None:
            log.warning("%d SEG(s) still wait in %s after %d sent: %s", len(self.unsent.pending()) + len(self.stranded),
                        self.unsent.folder, sent, exc if isinstance(exc, EdgesegError) else
                        f"{type(exc).__name__}: {exc}", exc_info=None if isinstance(exc, EdgesegError) else exc)
        elif sent:
            log.info("sent the %d SEG(s) that waited in %s", sent, self.unsent.folder)

    def keep_stranded(self) -> None:
        """Keep each stranded SEG in the unsent folder, where it can be written now (those it still
        cannot take are sent from where they are by :meth:`resend`)."""
        for item in list(self.stranded):
            seg, own = item
            try:
                kept = self.unsent.keep(seg)
            except FileNotFoundError:  # removed by hand meanwhile: the stop says nothing of it
                self.stranded.remove(item)
                continue
            except OSError:
                continue
            self._let_go(item)
            log.info("%s, not kept before, now waits in %s", seg.name, kept)

    def _let_go(self, item: tuple[Path, bool]) -> None:
        self.stranded.remove(item)
        if item[1]:
            item[0].unlink(missing_ok=True)

    def _send(self, path: Path) -> None:
        send_seg(self.peer, self.calling_ae, path)
        self.stats.forwarded.append(path.name)
        log.info("forwarded %s to %s", path.name, self.peer)
