"""The images the DICOM node refused, by series, and the series that failed for them: a series is
segmented whole or not at all (docs/serving.md, "A series with a refused image is not segmented")."""

from __future__ import annotations

import time
from collections.abc import Container, Iterable, Iterator
from pathlib import Path

from edgeseg.serve.dicom_refused_journal import NOTE_BYTES, RefusalJournal

# How long the notes of a series the node does not hold are kept after its latest refusal, and the
# images of a series that failed for its refusals after its first failure (docs/serving.md).
REFUSALS_KEPT_FOR = 6 * 3600.0


class RefusedImages:
    """The images the node refused, by series, that are not taken since: a series with one of them
    outstanding when it completes is not segmented, for its SEG would miss that image (the slices
    left around a refused one can even look evenly spaced). An image is known by its SOP Instance
    UID, and taken again (a peer re-sending it after 0xA700, corrected) it is no more outstanding;
    ``None`` stands for one that cannot be named so (its SOP Instance UID unreadable, or one
    reusing the UID of another image of its series), which nothing clears but an Enhanced CT of
    the series (a whole series in one file: :meth:`whole`). Each keeps the first reason it was
    refused for.

    A series that fails so is remembered with the SOP Instance UIDs it held or had refused: the
    same series arriving again is segmented only if it holds all of them (a whole re-send), never
    from a lone retry of the refused image (which a PACS typically sends after the failure). Only
    its first failure is remembered, and from its time: a later one (a retry, a re-send under new
    SOP Instance UIDs) neither adds to the images a re-send must hold nor keeps the series blocked
    longer.

    In a ``--work`` folder (:meth:`kept_in`) every change is also written to the folder before
    the image it is about is answered, and read back by the next node started on it, after a stop
    or a kill alike (dicom_refused_journal.py).

    Bounds, for a peer sending image after refused image: at most ``most`` series, the one noted
    longest ago and not in ``held`` forgotten first; at most ``most`` images named a series and
    ``most_images`` in all,
    past which an image more is noted as its series' ``None`` (which still fails it); at most
    ``most_images`` SOP Instance UIDs of failed series, the one failed longest ago forgotten first.
    The notes of a series not in ``held`` are forgotten ``kept_for`` seconds after its latest
    refusal, and a failed series ``kept_for`` seconds after its first failure. ``now`` is time.monotonic(). Called under the node's lock."""

    def __init__(self, most: int = 10_000, most_images: int = 100_000, kept_for: float = REFUSALS_KEPT_FOR,
                 journal: RefusalJournal | None = None) -> None:
        self.most, self.most_images, self.kept_for = most, most_images, kept_for
        self._by_series: dict[str, dict[str | None, str]] = {}  # the latest noted last
        self._noted: dict[str, float] = {}  # when each series was last noted, the latest last
        self._named = 0  # images named (not None) in _by_series
        self._failed: dict[str, tuple[frozenset[str], float]] = {}  # the latest failed last
        self._failed_images = 0
        # in a --work folder, each change on disk before the image it is about is answered
        self._journal = journal

    @classmethod
    def kept_in(cls, work: Path, held: Container[str] = ()) -> "RefusedImages":
        """The notes kept in the work folder ``work`` (dicom_refused_journal.py), read back, past
        their time forgotten (but those of a series in ``held``), and kept there from now on."""
        journal = RefusalJournal(work)
        notes = cls(journal=None)
        for kind, *args in journal.read(most_bytes=2 * notes.most_images * NOTE_BYTES + (1 << 20)):
            if kind == "fail":
                args[1] = frozenset(args[1])
            getattr(notes, f"_{kind}")(*args)
        notes.expire(time.monotonic(), held)
        journal.rewrite(notes._snapshot())
        notes._journal = journal
        return notes

    def __len__(self) -> int:
        """Entries held: images noted and SOP Instance UIDs of failed series."""
        return sum(len(images) for images in self._by_series.values()) + self._failed_images

    def refused(self, series_uid: str, sop_uid: str | None, reason: str, held: Container[str],
                now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.expire(now, held)
        images = self._by_series.get(series_uid)
        if images is None and len(self._by_series) >= self.most:
            gone = next((uid for uid in self._by_series if uid not in held), None)
            if gone is None:
                return
            self._change("forget", gone)
        images = images or {}
        if sop_uid is not None and sop_uid not in images and (len(images) >= self.most or
                                                              self._named >= self.most_images):
            sop_uid = None  # past a bound: counted as one not named, which still fails the series
        self._change("note", series_uid, sop_uid, reason, now)

    def taken(self, series_uid: str, sop_uid: str, whole: bool = False) -> None:
        """``sop_uid`` of ``series_uid`` was stored: it is no more refused. ``whole``: it is an
        Enhanced CT (:meth:`whole`)."""
        if whole:
            self.whole(series_uid)
            return
        self._change("take", series_uid, sop_uid)

    def whole(self, series_uid: str) -> None:
        """An Enhanced CT of ``series_uid`` was stored: the whole series in one file, it misses no
        image, and no note of the series (nor its failure) stands against it."""
        self._change("forget", series_uid)
        self._change("unfail", series_uid)

    def outstanding(self, series_uid: str, holds: Iterable[str] = (), now: float | None = None,
                    held: Container[str] = ()) -> str | None:
        """Why ``series_uid``, complete and holding the SOP instances ``holds``, is not to be
        segmented, or None. Its refusals are let go; when it fails for them, or is short of the
        images of its failure before, the images it holds and had refused are remembered."""
        now = time.monotonic() if now is None else now
        images = dict(self._by_series.get(series_uid) or {})  # its own notes stand, however old: it was held
        self._change("forget", series_uid)
        self.expire(now, held)
        before, _ = self._failed.get(series_uid, (frozenset(), 0.0))
        holding = set(holds)
        whole = holding | {sop for sop in images if sop is not None}
        if images:
            count = f"{len(images)} image{'' if len(images) == 1 else 's'}"
            reason = (f"{count} of it refused on arrival and not taken since (a SEG of the others would miss them); "
                      f"the first: {next(iter(images.values()))}")
        elif series_uid in self._failed and not before <= holding:
            reason = (f"it failed before for images refused, when it had {len(before)} images; this re-send holds "
                      f"{len(holding)} and misses {len(before - holding)} of them: send the whole series again, "
                      "keeping its SOP Instance UIDs")
        else:
            self._change("unfail", series_uid)
            return None
        if series_uid not in self._failed:  # only the first failure is remembered, with its time: a later
            self._remember_failed(series_uid, frozenset(whole), now)  # one neither grows it nor extends it
        return reason

    def expire(self, now: float, held: Container[str] = ()) -> None:
        """Forget the notes of the series not in ``held``, and the failed series, past ``kept_for``."""
        gone = []
        for uid, at in self._noted.items():  # the latest noted last
            if at + self.kept_for > now:
                break
            if uid not in held:
                gone.append(uid)
        for uid in gone:
            self._change("forget", uid)
        while self._failed:
            uid, (_, at) = next(iter(self._failed.items()))
            if at + self.kept_for > now:
                break
            self._change("unfail", uid)

    def close(self) -> None:
        """Let go of the journal's file (the node stopped)."""
        if self._journal is not None:
            self._journal.close()

    def _remember_failed(self, series_uid: str, sops: frozenset[str], now: float) -> None:
        if len(sops) > self.most_images:  # too many to remember: a failure nothing but an Enhanced CT clears
            sops = frozenset({""})
        while self._failed and (len(self._failed) >= self.most or self._failed_images + len(sops) > self.most_images):
            self._change("unfail", next(iter(self._failed)))
        self._change("fail", series_uid, sops, now)

    def _change(self, kind: str, *args) -> None:
        """Make one change to the notes (the methods below, each also what a line of the journal
        replays) and, where it changed them, write it to the journal."""
        if not getattr(self, f"_{kind}")(*args) or self._journal is None:
            return
        self._journal.write(kind, *args)
        if self._journal.grown():  # mostly changes undone since: written anew
            self._journal.rewrite(self._snapshot())

    def _snapshot(self) -> Iterator[tuple]:
        """The changes that make these notes from none, in order."""
        for uid, images in self._by_series.items():
            for sop, reason in images.items():
                yield "note", uid, sop, reason, self._noted[uid]
        for uid, (sops, at) in self._failed.items():
            yield "fail", uid, sops, at

    def _note(self, series_uid: str, sop_uid: str | None, reason: str, now: float) -> bool:
        images = self._by_series.pop(series_uid, None) or {}
        self._noted.pop(series_uid, None)
        self._by_series[series_uid], self._noted[series_uid] = images, now
        if sop_uid is not None and sop_uid not in images:
            self._named += 1
        images.setdefault(sop_uid, reason)
        return True

    def _take(self, series_uid: str, sop_uid: str) -> bool:
        images = self._by_series.get(series_uid)
        if images is None or images.pop(sop_uid, None) is None:
            return False
        self._named -= 1
        if not images:
            self._forget(series_uid)
        return True

    def _forget(self, series_uid: str) -> bool:
        images = self._by_series.pop(series_uid, None)
        self._noted.pop(series_uid, None)
        self._named -= sum(1 for sop in images or {} if sop is not None)
        return images is not None

    def _fail(self, series_uid: str, sops: frozenset[str], now: float) -> bool:
        self._unfail(series_uid)
        self._failed[series_uid] = (sops, now)
        self._failed_images += len(sops)
        return True

    def _unfail(self, series_uid: str) -> bool:
        sops, _ = self._failed.pop(series_uid, (None, 0.0))
        self._failed_images -= len(sops or ())
        return sops is not None
