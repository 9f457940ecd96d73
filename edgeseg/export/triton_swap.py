"""Swap a set of model folders into an existing Triton repository: all of them, or none.

Triton serves ``NAME`` and ``NAME-pipeline`` as a pair; a repository holding the new network
beside the old pipeline is served without complaint, so replacing them one by one is not enough.
The new model folders are first written whole into a staging folder *beside* the repository
(``.REPO.triton-swap-PID-HEX``: Triton takes every folder inside a repository for a model),
which holds ``new/`` (the staged models), ``old/`` (the replaced ones, moved aside), a marker
file naming the repository, and, during the swap, a journal naming each model folder by device
and inode before and after. The swap then moves each old model aside and its new one in (one
``renameat2(RENAME_EXCHANGE)`` per model where the filesystem has it, else two renames). On any
failure the old models are put back before the error is raised; the journal is removed only
once every model is in, so a run killed part-way leaves a staging folder that the next
``edgeseg triton`` into the same repository rolls back, restoring the old models exactly.

What a reader of the repository can see: renaming several folders is not one atomic step.
While the swap runs (a few renames) and, after a kill, until the next run rolls it back, the
repository can hold new models beside old ones. With the exchange each model folder is always
complete and present; with the two-rename fallback a model folder is absent between its two
renames. A Triton that polls the repository can load such a mix; one in explicit
model-control mode, told to load after ``edgeseg triton`` returned, cannot.

A staging folder is removed only when its name matches this repository, its process is gone
and it holds the marker naming this repository (an unmarked one is removed only when empty). The
marker is written atomically (:func:`edgeseg.atomic.atomic_write_text`), so a run killed while
writing it leaves an unmarked folder holding the marker's staged file, which is removed with it.

Two runs into one repository never overlap: :func:`repository_lock` holds an exclusive
``flock`` on the repository folder itself (on the nearest existing folder above it while the
repository does not exist yet), so no file is put inside it or beside it, and the kernel drops
the lock of a killed run. A second run waits for the first, saying so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeseg.atomic import atomic_write_bytes, atomic_write_text, exchange_paths
from edgeseg.errors import DataError, name_failure
from edgeseg.staging import clean_leftovers, process_alive

MARKER = "edgeseg-triton-swap"
JOURNAL = "swap.json"
_SWAP = re.compile(r"^\.(?P<name>.+)\.triton-swap-(?P<pid>\d+)-[0-9a-f]+$")

Step = Callable[[str, Path, Path], None]


def _lock_target(repo: Path) -> Path:
    """The folder whose lock guards ``repo``: the repository, or the nearest folder above it."""
    folder = repo
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    return folder


@contextlib.contextmanager
def repository_lock(repo: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Hold ``repo`` for this run alone (see the module), waiting for a run that holds it; ``on_wait``
    gets the one line to show before the wait. No lock where the OS or filesystem has none."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no guard
        yield
        return
    given, repo = repo, Path(repo).absolute()
    while True:
        folder = _lock_target(repo)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait(f"waiting for another edgeseg triton run on {given} to finish" if folder == repo else
                        f"waiting for another edgeseg triton run creating a repository in {folder} to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. ENOLCK on a filesystem without locks: run unguarded, and say so
                on_wait(f"cannot lock {folder} ({exc.strerror or exc}): another edgeseg triton run on it is not "
                        "kept out")
            # The run waited on created the repository (or removed it): its lock is now the one to hold.
            try:
                same = _lock_target(repo) == folder and os.path.samestat(os.fstat(fd), os.stat(folder))
            except FileNotFoundError:  # removed meanwhile: look again
                same = False
            if same:
                yield
                return
        finally:
            os.close(fd)  # releases the lock


def _identity(path: Path) -> list[int] | None:
    """Device and inode of ``path`` (a rename keeps both), None when nothing is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino]


@contextlib.contextmanager
def staged_swap(repo: Path, replaced: tuple[str, ...], on_step: Step | None = None) -> Iterator[Path]:
    """Yield a folder to write new model folders into; on success they replace their namesakes
    in ``repo`` and the models ``replaced`` that were not written are taken out, all or none
    (see the module). ``on_step(step, source, destination)`` is called before each rename
    ("exchange", "aside", "land") and before the staging folder is removed ("remove"), so tests
    can fail or stop the process at each."""
    step = on_step or (lambda name, source, destination: None)
    repo = Path(repo)
    recover_stale_swaps(repo)
    staging = repo.parent / f".{repo.name}.triton-swap-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        # never an empty marker, whatever kills this; the path's own bytes (a folder name need not be UTF-8)
        atomic_write_bytes(staging / MARKER, os.fsencode(repo.resolve()) + b"\n")
        (staging / "new").mkdir()
        (staging / "old").mkdir()
        yield staging / "new"
        staged = {p.name for p in (staging / "new").iterdir()}
        names = sorted(staged | {n for n in replaced if os.path.lexists(repo / n)})
        models = {n: {"new": _identity(staging / "new" / n), "old": _identity(repo / n)} for n in names}
        atomic_write_text(staging / JOURNAL, json.dumps({"repo": str(repo.resolve()), "models": models}))
        _swap_in(repo, staging, models, step)
    except BaseException as exc:
        if (staging / JOURNAL).exists():
            _roll_back(repo, staging, json.loads((staging / JOURNAL).read_text())["models"])
        _remove(staging)
        # the marker and the journal are the swap's own files: a failure writing them (a full disk) is the repository's
        name_failure(exc, repo, {str(staging / MARKER): repo, str(staging / JOURNAL): repo}, staging=(staging / "new", repo))
        raise
    os.unlink(staging / JOURNAL)  # the swap is complete: from here on nothing is rolled back
    step("remove", staging, staging)
    _remove(staging)


def _swap_in(repo: Path, staging: Path, models: dict, step: Step) -> None:
    new, old = staging / "new", staging / "old"
    for name, ids in models.items():
        target = repo / name
        if ids["new"] is None:  # an earlier bundle's model this one does not write: out of sight
            step("aside", target, old / name)
            os.rename(target, old / name)
        elif ids["old"] is None:
            step("land", new / name, target)
            os.rename(new / name, target)
        else:
            step("exchange", new / name, target)
            if exchange_paths(new / name, target):
                step("aside", new / name, old / name)  # after the exchange it holds the old model
                os.rename(new / name, old / name)
            else:
                step("aside", target, old / name)
                os.rename(target, old / name)
                step("land", new / name, target)
                os.rename(new / name, target)


def _roll_back(repo: Path, staging: Path, models: dict) -> None:
    """Put back every old model the journal names and take out the new ones that landed. A
    folder at a model's place that is neither is not touched; if an old model then cannot go
    back, DataError, and the staging folder (which holds it) is kept."""
    dropped = staging / "dropped"
    dropped.mkdir(exist_ok=True)
    for name, ids in models.items():
        target, here = repo / name, _identity(repo / name)
        if ids["old"] is not None and here == ids["old"]:
            continue
        if here is not None and here == ids["new"]:
            os.rename(target, dropped / name)
            here = None
        if ids["old"] is None:
            continue
        source = next((p for p in (staging / "old" / name, staging / "new" / name) if _identity(p) == ids["old"]), None)
        if source is None or here is not None:
            raise DataError(f"cannot put the old model {name} back into {target}: "
                            f"{'something else is there' if here is not None else 'it is gone'}; "
                            f"the staging folder {staging} is kept")
        os.rename(source, target)


def _remove(staging: Path) -> None:
    """Remove a staging folder, its marker last, so that one left half-removed is still known as ours."""
    with contextlib.suppress(OSError):
        for item in staging.iterdir():
            if item.name != MARKER:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        (staging / MARKER).unlink(missing_ok=True)  # a write that failed may not have made it
        staging.rmdir()


def recover_stale_swaps(repo: Path) -> None:
    """Roll back and remove the staging folders that killed runs left beside ``repo`` (see the
    module for how one is known as ours); those of running processes are left alone."""
    repo = Path(repo)
    if not repo.parent.is_dir():
        return
    for item in sorted(repo.parent.iterdir()):
        match = _SWAP.match(item.name)
        if (match is None or match["name"] != repo.name or item.is_symlink() or not item.is_dir()
                or process_alive(int(match["pid"]))):
            continue
        marker = item / MARKER
        clean_leftovers(marker)  # the marker's own staged file, where the run was killed writing it
        named = marker.read_bytes().strip() if marker.is_file() else b""
        if not named:  # killed before it was marked, so empty but for an empty marker (written in place by
            with contextlib.suppress(OSError):  # an earlier edgeseg); anything else is not ours
                if [p.name for p in item.iterdir()] == [MARKER]:
                    marker.unlink()
                item.rmdir()
            continue
        if named != os.fsencode(repo.resolve()):  # an earlier edgeseg wrote it as UTF-8 text: the same bytes
            continue
        if (item / JOURNAL).is_file():
            _roll_back(repo, item, json.loads((item / JOURNAL).read_text())["models"])
        _remove(item)
