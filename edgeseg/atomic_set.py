"""Outputs in several folders written as one set: a label map, its overlay and its colour table.

Each output is written beside its target first (:func:`edgeseg.atomic.atomic_path` does so for
one file); only once all are written are they put in place, one rename each, with Ctrl-C and
SIGTERM held back meanwhile (:func:`edgeseg.stopping.stops_held`), so a stop lands before the
first rename or after the last: the targets then hold the whole earlier set or the whole new one,
never some of each. A failure while writing leaves every target as it was. The renames are
done holding a lock on each target's folder (the one ``atomic_files`` takes), so two processes
writing the same set at once land one after the other: the set left is one writer's, whole.

What this cannot promise: renames in different folders are separate steps for the filesystem,
not one. Each target replaced keeps the earlier output aside until all are in place (exchanged
with the new one in a single step where Linux's ``renameat2(RENAME_EXCHANGE)`` is available;
else a hard link to an earlier file, or an earlier folder moved aside), so a rename that fails
partway (a folder made read-only meanwhile) is undone and the earlier set is back. A process
killed outright (SIGKILL, a crash, a power cut) between two renames leaves the set mixed, and the
earlier outputs it had already replaced under hidden names beside them. Those names, and those
of the outputs being written, carry the writer's pid (``.NAME.staging-PID-RANDOM.SUFFIXES``,
``.NAME.previous-PID-RANDOM``): the next write to the same target removes those whose process is
gone (:func:`edgeseg.staging.clean_leftovers`), and leaves a running writer's alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edgeseg.atomic import exchange_paths
from edgeseg.errors import name_failure
from edgeseg.staging import folder_flocked, let_go, make_folder, new_mode, sibling, staged_file, staged_folder
from edgeseg.stopping import stops_held


@contextlib.contextmanager
def atomic_set(files: Sequence[str | os.PathLike], folders: Sequence[str | os.PathLike] = ()) -> Iterator[dict]:
    """Yield ``{path: staged path}`` for each of ``files`` (an empty temporary file beside it,
    with its suffixes) and ``folders`` (an empty staging folder beside it); when the block ends
    without error, all are put in place as one set, as the module describes. On any exception
    the staged outputs are removed and the targets left as they were."""
    staged: dict = {}
    made: list[Path] = []
    landed = False
    try:
        for path in files:
            target = Path(path)
            made += make_folder(target.parent)
            staged[path] = staged_file(target)
        for path in folders:
            target = Path(path)
            made += make_folder(target.parent)
            staged[path] = staged_folder(target)
        yield dict(staged)
        with _folders_locked(Path(path).parent for path in staged), stops_held():  # a wait for a lock can be interrupted
            _land(staged)
            landed = True  # a stop held meanwhile is raised as the block ends: after this
    except BaseException as exc:
        if not landed:
            for tmp in staged.values():
                _remove(tmp)
            for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):  # not empty: another target's, or another writer's
                    folder.rmdir()
            if staged:  # an OS error that names no file: the first output's (each writer names its own)
                name_failure(exc, next(iter(staged)), {str(tmp): str(path) for path, tmp in staged.items()})
        raise
    finally:
        let_go(*staged.values())


@contextlib.contextmanager
def _folders_locked(folders: Iterable[Path]) -> Iterator[None]:
    """Hold every folder's lock (:func:`edgeseg.staging.folder_flocked`, as ``atomic_files`` takes
    it), taken in one order, sorted by resolved path, so that two writers of overlapping sets
    cannot each hold a lock the other waits for: one lands at a time, and the set left is one
    writer's, whole."""
    with contextlib.ExitStack() as stack:
        for folder in sorted({folder.resolve() for folder in folders}):
            stack.enter_context(folder_flocked(folder))
        yield


def _land(staged: dict) -> None:
    """Rename every staged output onto its target; if one fails, put back those already done."""
    done: list[tuple[Path, Path | None, bool]] = []
    try:
        for path, new in staged.items():
            target = Path(path)
            if new.is_file():
                os.chmod(new, new_mode(target))
            done.append((target, *_put_in_place(new, target)))
    except BaseException:
        for target, old, replaced in reversed(done):
            with contextlib.suppress(OSError):  # what cannot be put back stays new: the error says why
                _put_back(target, old, replaced)
        raise
    for _, old, _ in done:  # all in place: the earlier outputs go
        if old is not None:
            _remove(old)


def _put_in_place(new: Path, target: Path) -> tuple[Path | None, bool]:
    """Rename ``new`` onto ``target``; returns where the earlier output now is (None where there
    was none, or where it could not be kept) and whether there was one."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return None, False
    if os.path.isdir(target) != new.is_dir():  # as a rename refuses: a file never takes a folder's place
        code = errno.EISDIR if os.path.isdir(target) else errno.ENOTDIR
        raise OSError(code, os.strerror(code), str(target))
    if exchange_paths(new, target):
        return new, True  # the staging name now holds the earlier output
    old = sibling(target, "previous")
    if new.is_dir():  # the earlier folder aside first: a rename cannot replace a folder that is not empty
        os.rename(target, old)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(old, target)
            raise
        return old, True
    try:
        os.link(target, old)
    except OSError:  # no hard links on this filesystem: this one cannot be undone
        old = None
    os.replace(new, target)
    return old, True


def _put_back(target: Path, old: Path | None, replaced: bool) -> None:
    """Undo :func:`_put_in_place`: the earlier output back at ``target``, or none where there was none."""
    if not replaced:
        _remove(target)
    elif old is not None:
        if old.is_dir():
            if not exchange_paths(old, target):
                shutil.rmtree(target)
                os.rename(old, target)
                return
            shutil.rmtree(old)  # after the exchange it holds the new folder
        else:
            os.replace(old, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
