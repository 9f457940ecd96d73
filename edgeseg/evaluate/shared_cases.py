"""The shared-memory blocks that hand a case's prediction and truth to a metric worker
(:mod:`edgeseg.evaluate.case_metrics`), and the removal of those a killed evaluation left.

A block is a file of ``/dev/shm`` as large as the case (2 bytes a voxel: 315 MB for a 512 x 512 x
600 case). The evaluating process unlinks it once the case is scored, or on an error, Ctrl-C or
SIGTERM; multiprocessing's resource tracker unlinks it where the evaluating process alone is
killed. Where the whole process group is killed (``timeout -s KILL``, a cgroup's OOM killer, a
batch scheduler's SIGKILL), the tracker dies too and nothing unlinks it: the memory stays taken
until the machine restarts. So each block is named ``edgeseg-eval-<pid>-<n>`` and its creator
holds a shared ``flock`` on it while it lives; each evaluation with workers starts by removing
the blocks of this naming whose creator PID is not running here and whose lock no process holds
(a lock goes with its process, SIGKILL included; it covers a PID reused, or one of another PID
namespace sharing ``/dev/shm``). Unlinking in the worker as soon as it attaches would leave the
blocks of cases not yet attached, and passing a descriptor to a spawned worker needs a socket of
its own beside the pool's; the sweep covers every block whatever the moment of the kill, at the
cost of the memory staying taken until the next evaluation with workers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path

import numpy as np

from edgeseg.stopping import stops_held

PREFIX = "edgeseg-eval-"
_NAME = re.compile(re.escape(PREFIX) + r"(\d+)-(\d+)")
_numbers = itertools.count()


def shared(pred: np.ndarray, truth: np.ndarray):
    """A shared-memory block holding ``pred`` then ``truth``; None where there is no room for it.

    Through the pool's pipe a case's arrays are pickled, written in pipe-sized pieces, read and
    unpickled, which took as long as their metrics on 512 x 512 phantoms (docs/results.md); a
    block is written once and read in place. Its pages are reserved first (``posix_fallocate``): a
    tmpfs too small for the case (a container's 64 MB /dev/shm) then refuses it here, where a
    write into a mapping past its room would end the process with SIGBUS. Any exception after the
    block is made (Ctrl-C, SIGTERM during the copy) unlinks it before it goes on."""
    from multiprocessing import shared_memory

    try:
        import fcntl
    except ImportError:  # Windows: no posix_fallocate either, the pipe it is
        return None
    size = pred.nbytes + truth.nbytes
    try:
        block = shared_memory.SharedMemory(name=f"{PREFIX}{os.getpid()}-{next(_numbers)}", create=True,
                                           size=max(1, size))
    except OSError:
        return None
    try:
        fcntl.flock(block._fd, fcntl.LOCK_SH)  # no public way to the descriptor
        os.posix_fallocate(block._fd, 0, max(1, size))
        block.buf[:pred.nbytes] = pred.reshape(-1).view(np.uint8)
        block.buf[pred.nbytes:size] = truth.reshape(-1).view(np.uint8)
    except (AttributeError, OSError):  # no posix_fallocate (macOS), or no room
        release(block)
        return None
    except BaseException:
        release(block)
        raise
    return block


def release(block) -> None:
    """Close and unlink ``block`` (None: nothing); one a sweep already removed is gone. Ctrl-C and
    SIGTERM wait for the end (``stops_held``): unlinking removes the file, then tells
    multiprocessing's resource tracker, and a stop in between left the tracker to warn, on the
    command's stderr as it ended, of a leaked block it then failed to remove."""
    if block is not None:
        with stops_held():
            block.close()
            with contextlib.suppress(FileNotFoundError):
                block.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def sweep_orphans(folder: Path = Path("/dev/shm")) -> list[str]:
    """Remove the blocks in ``folder`` of evaluations no longer running (see the module); their
    names. A block of a running creator, or one still locked, is left alone."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:  # no /dev/shm (macOS keeps POSIX shared memory elsewhere)
        return removed
    import fcntl

    for name in names:
        match = _NAME.fullmatch(name)
        if match is None or int(match.group(1)) == os.getpid() or _running(int(match.group(1))):
            continue
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(folder / name)
            removed.append(name)
        except OSError:  # locked: its creator lives (in another PID namespace); or already gone
            continue
        finally:
            os.close(fd)
    return removed
