"""What this machine is, as far as a latency figure or a backend choice depends on it: the CPU's
model and feature flags, and the installed versions of the backend libraries.

Read from /proc/cpuinfo and the ``*.dist-info`` folder names on ``sys.path``, never by running
``uname`` or importing ``importlib.metadata``: both are paid by every cold start that reads the
backend probe cache.
"""

from __future__ import annotations

import os
import platform
import re
import sys


def cpu_flags() -> frozenset[str] | None:
    """The first CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm);
    None where there is no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.partition(":")[2].split())
        return frozenset()
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU's model name: the first ``model name`` of /proc/cpuinfo ("" where it has none,
    as on ARM), else (no /proc) ``platform.processor()``. On Linux that would run ``uname -p``
    in a child process, a few ms of every cold start, and mostly say only ``x86_64``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:  # stops at the first CPU's entry
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
        return ""
    except OSError:
        return platform.processor()


# CPU features that change how fast a bundle runs here (vector width, INT8 and bf16 dot products):
# x86 flags, and the Arm ones of /proc/cpuinfo's Features line (asimddp: INT8 dot products).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
               "asimd", "asimddp", "sve", "i8mm", "bf16")


def machine_signature() -> str:
    """What a latency figure depends on besides load: CPU model, logical CPUs and the speed-relevant
    instruction sets, e.g. ``AMD EPYC | 2 cpus | avx2``. Figures with different signatures are not
    comparable (the same model name can hide different generations; the flags tell them apart)."""
    flags = cpu_flags() or frozenset()
    isa = ",".join(f for f in SPEED_FLAGS if f in flags) or "-"
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may run on (taskset, containers)
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return f"{cpu_model() or platform.machine()} | {cpus} cpus | {isa}"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions_on_path():
    """(normalised name, version, folder) of each ``NAME-VERSION.dist-info`` (or ``.egg-info``)
    folder on ``sys.path``, the first of each name only, as ``importlib.metadata`` resolves them.
    Read from the folder names: importlib.metadata itself imports email, csv and zipfile, tens of
    ms of every cold start that reads the probe cache or the runner registry."""
    seen: set[str] = set()
    for folder in sys.path:
        try:
            entries = os.scandir(folder or ".")
        except OSError:  # a zip file, or a folder that is gone
            continue
        with entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if ext not in ("dist-info", "egg-info") or not dot:
                    continue
                name, _, version = stem.partition("-")
                version = version.partition("-")[0]  # an egg-info's NAME-VERSION-pyX.Y
                key = _normalized(name)
                if key not in seen and version:
                    seen.add(key)
                    yield key, version, entry.path


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Distribution name -> installed version, for those of ``names`` installed (the first one
    on ``sys.path`` wins, as for ``importlib.metadata.version``)."""
    wanted = {_normalized(n): n for n in names}
    return {wanted[key]: version for key, version, _ in distributions_on_path() if key in wanted}
