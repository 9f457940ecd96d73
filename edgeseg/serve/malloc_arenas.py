"""The DICOM node's process keeps at most two glibc malloc arenas, and gives back the free memory
glibc keeps after a series is segmented.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and an arena
keeps the free pieces of what its threads allocated. pynetdicom runs every association in a new
thread, so the node's large, short-lived allocations (a 512 x 512 slice's pixel data and HU, the
SEG's frames) land in a changing arena each time, and each arena keeps the gaps they leave. In
soaks of `edgeseg listen` (benchmarks/soak.py listen; docs/results.md, "Soak") two arenas (glibc's
``MALLOC_ARENA_MAX=2``) kept its resident memory 3-9 MiB lower than the 15 arenas it had, at the
same throughput; they do not stop its slow climb, which is glibc's heap (free memory it keeps, and
CPython's interned-string table), not a live object more (docs/serving.md, "Memory over a long run").
What glibc keeps is free memory, scattered between the chunks in use where its own trimming (only
at the top of a heap) cannot reach it; ``malloc_trim(0)`` returns every free page of it.
``edgeseg listen`` calls ``release_free_memory`` once a series is segmented, at most once per
``TRIM_EVERY_S`` seconds (docs/results.md, "Soak").
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import threading
import time

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
NODE_ARENAS = 2
TRIM_EVERY_S = 1.0  # at most one malloc_trim(0) per this many seconds (math.inf: none)
_trim_lock = threading.Lock()
_last_trim = [-math.inf]


def cap_malloc_arenas(limit: int = NODE_ARENAS) -> bool:
    """Cap glibc's malloc arenas of this process at ``limit``; True when capped. Nothing is done
    where the process is not on glibc, or where ``MALLOC_ARENA_MAX`` is set (the operator's
    choice, which glibc has already taken). Call it before the process starts threads: a thread
    that has allocated keeps the arena it has."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and mallopt(M_ARENA_MAX, int(limit)) == 1


@functools.lru_cache(maxsize=None)
def _glibc_function(name: str):
    if platform.libc_ver()[0] != "glibc":
        return None
    return getattr(ctypes.CDLL(None), name, None)


def release_free_memory() -> bool:
    """Give the free memory glibc keeps in its heaps back to the system (``malloc_trim(0)``), unless
    this process did so less than ``TRIM_EVERY_S`` seconds ago; True when it did. Call it where a
    large piece of work has just let go of its buffers (a series segmented); it takes each arena's
    lock in turn, so a thread allocating meanwhile waits for one arena's walk at most."""
    with _trim_lock:
        now = time.monotonic()
        if now - _last_trim[0] < TRIM_EVERY_S:
            return False
        trim = _glibc_function("malloc_trim")
        if trim is None:
            return False
        _last_trim[0] = now
        trim(0)
        return True


class ReleaseAfterWork:
    """``release_free_memory`` once more work is done than at its last trim: ``after(done)`` with a
    count that grows with the work (series segmented or failed), called as often as convenient; an
    idle process is left alone, and a trim refused for the rate is tried again at the next call."""

    def __init__(self) -> None:
        self._trimmed_at = 0

    def after(self, done: int) -> bool:
        if done == self._trimmed_at or not release_free_memory():
            return False
        self._trimmed_at = done
        return True
