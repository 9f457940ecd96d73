"""Atomic output: write beside the target, then rename, so no reader sees half a file or folder.

Files are written to a temporary name and renamed over the target. Folders (bundles, Triton
repositories, PNG series) are written into a staging folder beside the target; a new target is
one rename, and an existing one is replaced by exchanging the two folders in one step with
Linux's ``renameat2(RENAME_EXCHANGE)``, so that at every instant the path holds either the
complete old folder or the complete new one. Where the exchange is not available (another OS,
a filesystem without it) the fallback is two renames, old aside then new in; a process killed
between them leaves the old folder under a ``.NAME.previous-PID-...`` name, and the next
write to the same target puts it back before doing anything else.

Staging names, of files and folders alike, carry the writer's process id
(``.NAME.staging-PID-...``, :mod:`edgeseg.staging`): a later write to the same target removes
those whose process is gone, so a killed write leaves nothing behind for long, while a
concurrent one is left alone. :func:`check_output_file` and
:func:`check_output_folder` let a command refuse an output it cannot write before any work.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from edgeseg.errors import DataError, name_failure
from edgeseg.staging import (folder_flocked, let_go, make_folder, new_mode, remove_empty, sibling, staged_file,
                             staged_folder)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was. ``suffix``
    lets libraries that choose a format by extension (nibabel, matplotlib) see the right one.
    The temporary name carries this process's id, and dead writers' are removed first
    (:func:`edgeseg.staging.staged_file`), so a writer killed outright leaves nothing for long.
    """
    target = Path(path)
    made = make_folder(target.parent)
    tmp_path = None
    try:
        tmp_path = staged_file(target, suffix)
        yield tmp_path
        os.chmod(tmp_path, new_mode(target))
        os.replace(tmp_path, target)
    except BaseException as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        remove_empty(made)
        name_failure(exc, target, {str(tmp_path): str(target)} if tmp_path is not None else None)
        raise
    finally:
        let_go(tmp_path)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike, names: Sequence[str], drop: Sequence[str] = ()) -> Iterator[dict[str, Path]]:
    """Write the files ``names`` of ``folder`` as one set (a table and its JSON and plot, say).

    Yields ``{name: temporary path}``, each beside its file; when the block ends without error,
    all are renamed into place together, and the files ``drop`` (an earlier set's that this set
    lacks) are removed, with Ctrl-C and SIGTERM held back meanwhile (``stopping.stops_held``:
    a stop lands before the first rename or after the last) and under an exclusive lock on the
    folder, so that concurrent writers' files never mix: the folder holds one writer's whole
    set. On any exception the temporaries are removed, the files there are left as they were,
    and a folder this made is removed again.
    """
    from edgeseg.stopping import stops_held

    target = Path(folder)
    made = make_folder(target)
    staged: dict[str, Path] = {}
    try:
        for name in names:
            staged[name] = staged_file(target / name)
        yield staged
        with folder_flocked(target), stops_held():  # a wait for the lock can still be interrupted
            for name, tmp in staged.items():
                os.chmod(tmp, new_mode(target / name))
                os.replace(tmp, target / name)
            for name in drop:
                (target / name).unlink(missing_ok=True)
    except BaseException as exc:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        name_failure(exc, target, {str(tmp): str(target / name) for name, tmp in staged.items()})
        remove_empty(made)
        raise
    finally:
        let_go(*staged.values())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (``renameat2(RENAME_EXCHANGE)``).

    Returns False, having changed nothing, where the exchange is not available (no
    ``renameat2`` in the C library, a kernel or filesystem without it); raises OSError for
    any other failure.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


class TargetAppeared(FileExistsError):
    """A folder to land without replacing (``replace_dir(replace=False)``) exists by then."""


def replace_dir(new: Path, target: Path, on_step: Callable[[str], None] | None = None, replace: bool = True) -> None:
    """Put the folder ``new`` at ``target``, replacing a folder there, as the module describes.

    ``replace=False``: ``target`` must not exist when ``new`` lands (FileExistsError otherwise,
    with ``new`` left in place): a plain rename, which POSIX refuses onto a non-empty folder, so
    two writers that both found ``target`` absent cannot both land.
    ``on_step`` is called with each step's name just before it ("rename", "exchange",
    "remove-old", "move-old-aside", "rename-new"), so tests can stop the process at each.
    """
    step = on_step or (lambda name: None)
    if not os.path.lexists(target) or not replace:
        if os.path.lexists(target) and not (os.path.isdir(target) and not os.listdir(target)):
            raise TargetAppeared(errno.EEXIST, "appeared while it was being written", str(target))
        step("rename")
        try:
            os.rename(new, target)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise TargetAppeared(errno.EEXIST, "appeared while it was being written", str(target)) from None
            raise
        return
    step("exchange")
    if exchange_paths(new, target):
        step("remove-old")
        shutil.rmtree(new, ignore_errors=True)  # after the exchange it holds the old folder
        return
    previous = sibling(target, "previous")
    step("move-old-aside")
    os.rename(target, previous)
    try:
        step("rename-new")
        os.rename(new, target)
    except BaseException:
        os.rename(previous, target)
        raise
    try:
        step("remove-old")
    finally:
        shutil.rmtree(previous, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, on_step: Callable[[str], None] | None = None,
               replace: bool = True) -> Iterator[Path]:
    """Yield a staging folder beside ``path``; on success it replaces ``path`` whole (see
    :func:`replace_dir`; ``replace=False``: only if ``path`` is still absent, FileExistsError
    otherwise), on failure it is removed and ``path`` is left as it was."""
    target = Path(path)
    made = make_folder(target.parent)
    tmp = staged_folder(target)
    try:
        yield tmp
        replace_dir(tmp, target, on_step, replace)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty(made)
        name_failure(exc, target, staging=(tmp, target))
        raise
    finally:
        let_go(tmp)


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, links resolved: where writing ``path``
    would write into (or over) ``folder``."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def _probe(target: Path, what: str) -> None:
    """Create and remove a file in the nearest existing folder above ``target``: the only check
    that answers for root, read-only mounts and pseudo filesystems such as /proc alike."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DataError(f"cannot write {what} {target}: {folder} is not a writable folder (it is a file)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeseg-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DataError(f"cannot write {what} {target}: {folder} is not a writable folder ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, a file output that is an existing folder or cannot be written."""
    target = Path(path)
    if target.is_dir():
        raise DataError(f"{what} {target} is an existing folder; name a file")
    if os.path.lexists(target) and not target.is_file():
        raise DataError(f"{what} {target} exists and is not a regular file")
    _probe(target, what)
    return target


def check_output_folder(path: str | os.PathLike, what: str = "output folder", staged: bool = False) -> Path:
    """Refuse, before any work, a folder output that is a file or cannot be written.

    ``staged``: the folder is written whole by :func:`atomic_dir`, so its parent must take
    new folders; otherwise files are written inside it.
    """
    target = Path(path)
    if os.path.lexists(target) and not target.is_dir():
        raise DataError(f"{what} {target} exists and is not a folder")
    _probe(target / ".edgeseg" if target.is_dir() and not staged else target, what)
    return target


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str, busy: str,
                discard_on: type[BaseException] | tuple[type[BaseException], ...] = (),
                keep: str | None = None) -> Iterator[None]:
    """Hold ``folder/name`` locked (``flock``) for the block, so two processes never work in one
    folder at once; DataError ``busy`` when another process holds it (and then nothing is touched:
    the folder is the other process's). A folder this made is removed again, while the lock is
    still held, when it holds nothing but the lock as the block ends (the work failed before
    writing), or when the block raises ``discard_on`` and the folder holds no ``keep`` file."""
    target = Path(folder)
    made = make_folder(target)
    try:
        import fcntl
    except ImportError:  # no flock here (not POSIX): no guard
        yield
        return
    with open(target / name, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(busy) from None
        try:
            yield
        except discard_on:
            if made and not (keep and (target / keep).exists()):
                _remove_made(made)
            raise
        finally:
            if made and target.is_dir() and [p.name for p in target.iterdir()] == [name]:
                _remove_made(made)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_made(made: list[Path]) -> None:
    """Remove the folder ``made[0]`` and those above it this process made, as far as they are empty."""
    shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()
        except OSError:  # something else was put there meanwhile
            break
