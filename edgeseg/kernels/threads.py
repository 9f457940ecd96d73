"""How many threads the C kernels use: one process-wide default, overridable per call."""

from __future__ import annotations

from edgeseg.errors import EdgesegError
from edgeseg.kernels import _kernels

_num_threads: int | None = None


def has_openmp() -> bool:
    """True when the kernels were built with OpenMP; otherwise every call runs serially."""
    return _kernels.has_openmp()


def build_info() -> dict:
    """How the C kernels were built: ``compiler`` (name and version) and ``openmp`` (the
    ``_OPENMP`` date of the OpenMP version, e.g. 201511 for 4.5; 0 for a serial build) and
    ``simd``, the hand-written SIMD paths compiled in: "sse2", "avx2" (AVX2 clones of the hot
    loops, picked at load time), "sse2+avx2", or "portable" for none (``CFLAGS=-DES_NO_SIMD``, or
    a CPU other than x86-64)."""
    return _kernels.build_info()


def get_num_threads() -> int:
    """Threads a kernel call uses when it is not given ``num_threads`` (OpenMP's default)."""
    return _num_threads if _num_threads is not None else int(_kernels.default_threads())


def set_num_threads(num_threads: int | None) -> None:
    """Set the default thread count of kernel calls; ``None`` restores OpenMP's default."""
    global _num_threads
    _num_threads = None if num_threads is None else resolve_threads(num_threads)


def resolve_threads(num_threads: int | None) -> int:
    """Validate a per-call ``num_threads`` (None = the default) and return the count to use."""
    if num_threads is None:
        return get_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise EdgesegError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    return num_threads
