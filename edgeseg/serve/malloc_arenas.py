"""The DICOM node's process keeps at most two glibc malloc arenas.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and an arena
keeps the free pieces of what its threads allocated. pynetdicom runs every association in a new
thread, so the node's large, short-lived allocations (a 512 x 512 slice's pixel data and HU, the
SEG's frames) land in a changing arena each time, and each arena keeps the gaps they leave. In
soaks of `edgeseg listen` (benchmarks/soak.py listen; docs/results.md, "Soak") two arenas (glibc's
``MALLOC_ARENA_MAX=2``) kept its resident memory 3-9 MiB lower than the 15 arenas it had, at the
same throughput. Its climb over the first thousands of associations is no leak and levels off:
high-water marks of glibc's heap (free memory it keeps, and CPython's interned-string table) and of
pymalloc's arenas, not a live object more (docs/serving.md, "Memory over a long run").
"""

from __future__ import annotations

import ctypes
import os
import platform

M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h
NODE_ARENAS = 2


def cap_malloc_arenas(limit: int = NODE_ARENAS) -> bool:
    """Cap glibc's malloc arenas of this process at ``limit``; True when capped. Nothing is done
    where the process is not on glibc, or where ``MALLOC_ARENA_MAX`` is set (the operator's
    choice, which glibc has already taken). Call it before the process starts threads: a thread
    that has allocated keeps the arena it has."""
    if os.environ.get("MALLOC_ARENA_MAX") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(M_ARENA_MAX, int(limit)) == 1
