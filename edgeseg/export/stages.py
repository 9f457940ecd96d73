"""Wall time and peak memory of each export stage, for ``parity.json``.

``record_stages()`` opens a record for one export; ``stage(name)`` anywhere below it times a
block and measures the peak resident memory reached inside it. Outside a record ``stage`` does
nothing, so library functions can mark their stages unconditionally.

The peak of one stage comes from Linux's high-water mark: writing ``5`` to
``/proc/self/clear_refs`` resets ``VmHWM`` to the current resident size, and ``VmHWM`` read at
the end of the block is the largest resident size since. Where that is not available the
record says so (``peak_scope: "process"``) and gives the process peak so far instead.

The reset also lowers what the kernel reports as the process's own peak (``ru_maxrss``, and so
the "Maximum resident set size" of ``/usr/bin/time``), so the record keeps the process peak
itself: :func:`process_peak_mb` is the largest mark seen before any reset, inside or between
stages.
"""

from __future__ import annotations

import contextlib
import contextvars
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_CURRENT: contextvars.ContextVar[list | None] = contextvars.ContextVar("edgeseg_export_stages", default=None)
_PEAK: contextvars.ContextVar[list | None] = contextvars.ContextVar("edgeseg_export_peak", default=None)
_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@contextlib.contextmanager
def record_stages() -> Iterator[list[dict]]:
    """Collect the stages run inside the block; yields the list that fills with one dict per
    stage: name, seconds, peak_rss_mb, peak_scope ("stage" or "process")."""
    stages: list[dict] = []
    token, peak_token = _CURRENT.set(stages), _PEAK.set([0.0])
    try:
        yield stages
    finally:
        _CURRENT.reset(token)
        _PEAK.reset(peak_token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the block and measure its peak resident memory into the open record, if any.

    A stage nested in another is recorded as ``outer/inner``; the outer stage's peak still
    covers the time before the inner stage reset the high-water mark.
    """
    stages = _CURRENT.get()
    if stages is None:
        yield
        return
    opened = [s for s in stages if "_seen" in s]
    entry = {"name": "/".join([*(s["name"] for s in opened[-1:]), name])}
    stages.append(entry)
    before = _hwm_mb() or 0.0
    _PEAK.get()[0] = max(_PEAK.get()[0], before)
    for outer in opened:  # the reset below would lose what the outer stages have seen so far
        outer["_seen"] = max(outer["_seen"], before)
    entry["peak_scope"] = "stage" if _reset_hwm() else "process"
    entry["_seen"] = 0.0
    start = time.perf_counter()
    try:
        yield
    finally:
        entry["seconds"] = round(time.perf_counter() - start, 3)
        entry["peak_rss_mb"] = round(max(_hwm_mb() or 0.0, entry.pop("_seen")), 1)
        _PEAK.get()[0] = max(_PEAK.get()[0], entry["peak_rss_mb"])


def process_peak_mb() -> float:
    """Peak resident memory of this process in MiB: inside a record, the largest high-water
    mark seen across its resets; elsewhere (or without resets) ``ru_maxrss``."""
    rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)
    seen = _PEAK.get()
    return max(rusage, _hwm_mb() or 0.0, seen[0] if seen else 0.0)


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _hwm_mb() -> float | None:
    """``VmHWM`` (peak resident memory since the last reset) in MiB, or the process peak."""
    with contextlib.suppress(OSError):  # no /proc (not Linux): the process peak below
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 / (1024.0 if sys.platform == "darwin" else 1.0)
