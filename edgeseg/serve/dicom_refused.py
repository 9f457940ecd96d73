"""The images the DICOM node refused, by series, and the series that failed for them: a series is
segmented whole or not at all (docs/serving.md, "A series with a refused image is not segmented")."""

from __future__ import annotations

import time
from collections.abc import Container, Iterable

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

    Bounds, for a peer sending image after refused image: at most ``most`` series, the one noted
    longest ago and not in ``held`` forgotten first; at most ``most`` images named a series and
    ``most_images`` in all,
    past which an image more is noted as its series' ``None`` (which still fails it); at most
    ``most_images`` SOP Instance UIDs of failed series, the one failed longest ago forgotten first.
    The notes of a series not in ``held`` are forgotten ``kept_for`` seconds after its latest
    refusal, and a failed series ``kept_for`` seconds after its first failure. ``now`` is time.monotonic(). Called under the node's lock."""

    def __init__(self, most: int = 10_000, most_images: int = 100_000, kept_for: float = REFUSALS_KEPT_FOR) -> None:
        self.most, self.most_images, self.kept_for = most, most_images, kept_for
        self._by_series: dict[str, dict[str | None, str]] = {}  # the latest noted last
        self._noted: dict[str, float] = {}  # when each series was last noted, the latest last
        self._named = 0  # images named (not None) in _by_series
        self._failed: dict[str, tuple[frozenset[str], float]] = {}  # the latest failed last
        self._failed_images = 0

    def __len__(self) -> int:
        """Entries held: images noted and SOP Instance UIDs of failed series."""
        return sum(len(images) for images in self._by_series.values()) + self._failed_images

    def refused(self, series_uid: str, sop_uid: str | None, reason: str, held: Container[str],
                now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.expire(now, held)
        images = self._by_series.pop(series_uid, None)
        if images is None:
            if len(self._by_series) >= self.most:
                gone = next((uid for uid in self._by_series if uid not in held), None)
                if gone is None:
                    return
                self._forget(gone)
            images = {}
        self._noted.pop(series_uid, None)
        self._by_series[series_uid], self._noted[series_uid] = images, now
        if sop_uid is not None and sop_uid not in images:
            if len(images) >= self.most or self._named >= self.most_images:
                sop_uid = None  # past a bound: counted as one not named, which still fails the series
            else:
                self._named += 1
        images.setdefault(sop_uid, reason)

    def taken(self, series_uid: str, sop_uid: str, whole: bool = False) -> None:
        """``sop_uid`` of ``series_uid`` was stored: it is no more refused. ``whole``: it is an
        Enhanced CT (:meth:`whole`)."""
        if whole:
            self.whole(series_uid)
            return
        images = self._by_series.get(series_uid)
        if images is not None and images.pop(sop_uid, None) is not None:
            self._named -= 1
            if not images:
                self._forget(series_uid)

    def whole(self, series_uid: str) -> None:
        """An Enhanced CT of ``series_uid`` was stored: the whole series in one file, it misses no
        image, and no note of the series (nor its failure) stands against it."""
        self._forget(series_uid)
        self._drop_failed(series_uid)

    def outstanding(self, series_uid: str, holds: Iterable[str] = (), now: float | None = None,
                    held: Container[str] = ()) -> str | None:
        """Why ``series_uid``, complete and holding the SOP instances ``holds``, is not to be
        segmented, or None. Its refusals are let go; when it fails for them, or is short of the
        images of its failure before, the images it holds and had refused are remembered."""
        now = time.monotonic() if now is None else now
        images = self._by_series.get(series_uid) or {}  # its own notes stand, however old: it was held
        self._forget(series_uid)
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
            self._drop_failed(series_uid)
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
            self._forget(uid)
        while self._failed:
            uid, (_, at) = next(iter(self._failed.items()))
            if at + self.kept_for > now:
                break
            self._drop_failed(uid)

    def _forget(self, series_uid: str) -> None:
        images = self._by_series.pop(series_uid, None) or {}
        self._noted.pop(series_uid, None)
        self._named -= sum(1 for sop in images if sop is not None)

    def _remember_failed(self, series_uid: str, sops: frozenset[str], now: float) -> None:
        if len(sops) > self.most_images:  # too many to remember: a failure nothing but an Enhanced CT clears
            sops = frozenset({""})
        while self._failed and (len(self._failed) >= self.most or self._failed_images + len(sops) > self.most_images):
            self._drop_failed(next(iter(self._failed)))
        self._failed[series_uid] = (sops, now)
        self._failed_images += len(sops)

    def _drop_failed(self, series_uid: str) -> None:
        sops, _ = self._failed.pop(series_uid, (frozenset(), 0.0))
        self._failed_images -= len(sops)
