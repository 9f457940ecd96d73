"""What a forked child may do with a Segmenter or runner its parent loaded: nothing but drop it.

``fork`` copies a process's memory but only the thread that called it. The engines' worker
threads (ONNX Runtime's intra-op pool, OpenVINO's TBB arena), the Segmenter's pre-processing
thread and whichever thread held a lock at that moment are not in the child, so a call there
waits for them for ever, and so does freeing the engine (its destructor joins those threads).
A runner therefore remembers the process that made it: in any other process every call raises
one ``BackendError`` saying to load the bundle there, before it touches a lock, and ``close``
releases nothing. Every runner alive at a fork is kept referenced in the child until it exits,
so that dropping the inherited Segmenter never runs an engine's destructor there.
"""

from __future__ import annotations

import os
import weakref

from edgeseg.errors import BackendError

_live: weakref.WeakSet = weakref.WeakSet()
# In a forked child: the runners inherited from the parent, never to be freed in this process.
_inherited: list = []


def track(owner: object) -> int:
    """Register ``owner`` (an object holding an engine) and return this process's id, its owner."""
    _live.add(owner)
    return os.getpid()


def forked_away(pid: int) -> bool:
    """True in a process other than ``pid``, the one that loaded the engine (a forked child)."""
    return os.getpid() != pid


def check_process(pid: int, what: str) -> None:
    """BackendError in a process forked from ``pid`` after ``what`` was loaded there."""
    if forked_away(pid):
        raise BackendError(f"{what} was loaded in process {pid}, and this process ({os.getpid()}) was forked from it "
                           "afterwards; an engine does not survive fork: load the bundle in this process (e.g. in a "
                           "multiprocessing pool's initializer) or start workers with the 'spawn' method")


def _keep_inherited() -> None:
    inherited = list(_live)
    _inherited.extend(inherited)
    if inherited:
        import ctypes

        # A reference the interpreter does not know of: its exit, which clears every module
        # (this list too) before it ends, then frees no inherited engine either.
        for owner in inherited:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(owner))


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_keep_inherited)
