"""The DICOM node's process keeps at most two glibc malloc arenas.

glibc gives each new thread that allocates an arena of its own, up to eight per core, and an arena
keeps the free pieces of what its threads allocated. pynetdicom runs every association in a new
thread, so the node's large, short-lived allocations (a 512 x 512 slice's pixel data and HU, the
SEG's frames) land in a changing arena each time, and the gaps they leave add up: in a 25-minute
soak of `edgeseg listen` (benchmarks/soak.py listen) its resident memory rose by about 3.6 MiB per
1,000 associations and had not levelled off, while the live Python objects stayed the same
(docs/results.md, "Soak"). Two arenas (glibc's ``MALLOC_ARENA_MAX=2``) held it to about 0.3 MiB per
1,000 with the same traffic. The node's threads mostly allocate one at a time, so sharing arenas
costs it no measurable time.
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
