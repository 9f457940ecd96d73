"""What every atomic writer shares: staging names beside a target that tidy themselves.

An output is written under a hidden name beside its target, ``.NAME.staging-PID-RANDOM[SUFFIXES]``
(an earlier folder or file kept aside: ``.NAME.previous-PID-RANDOM``), and renamed into place.
The writer's pid in the name lets the next write to the same target tell a killed writer's
leftovers (SIGKILL, a crash, a power cut) from a running one's: :func:`clean_leftovers` removes
the first and leaves the second, and any other name, alone. A pid says nothing about a writer in
another pid namespace (a container sharing the folder) or on another host (a shared filesystem),
so a staged file or folder is also held under an exclusive ``flock`` by its writer until it is
renamed into place or removed, and one still locked is left alone whatever its pid (an NFS
client emulates ``flock`` with byte-range locks, which a folder cannot take: there a staging
folder is judged by its pid alone). A writer tidying holds the lock of what it removes, and a
writer that has just made its staging file or folder looks for it again once its own lock is
held: one removed in the instant between (taken for a dead writer's by a writer in another pid
namespace) is made again under a new name. A writer
writing a set of files into its own staging folder takes that folder's lock
(:func:`folder_flocked`) while holding it already: the lock it holds is taken as held, not waited
for (a second ``flock`` of the same folder in one process would wait for itself). Tidying is best-effort:
a leftover that cannot be removed (another user's, in a shared folder) is left, and the write
goes on. :mod:`edgeseg.atomic` (one file, one
folder, a set of files in one folder) and :mod:`edgeseg.atomic_set` (outputs in several folders)
stage this way; the folders a write makes, the mode a new file gets and the lock a set's renames
are done under are here too, so that both behave alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from edgeseg.errors import DataError

# Staged files and folders and the descriptor holding each one's flock, until let_go
_HELD: dict[str, int] = {}
# The staging folders among them, by (device, inode): folder_flocked finds them held already
_HELD_FOLDERS: dict[tuple[int, int], str] = {}
# Staging names made in a row that vanished before their lock was taken, before a write gives up
_TRIES = 100
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>staging|previous)-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>(\.[^.]+)*)$")


def sibling(target: Path, kind: str, suffix: str = "") -> Path:
    """``.NAME.KIND-PID-RANDOM[SUFFIX]`` beside ``target`` (``kind``: "staging" or "previous"):
    the writer's pid tells :func:`clean_leftovers` whether it still runs."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs. On Linux a zombie (ended, not yet reaped by its parent) counts
    as gone; elsewhere signal 0 says only whether the pid exists."""
    if pid == os.getpid():
        return True
    if os.path.exists("/proc/self/stat"):
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                return stat_file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(target: str | os.PathLike, suffix: str = "") -> None:
    """Tidy what killed writers left beside ``target``: restore an old folder or file moved aside
    when ``target`` is missing, and remove the staged and kept-aside outputs of dead processes
    (:func:`sibling`'s names, ending in no suffix, in ``target``'s or in ``suffix``, the one a
    writer staged under; a live writer's, and any other name, are left alone)."""
    target = Path(target)
    prefix = f".{target.name}."
    try:  # names alone, filtered before anything else: every file written into a folder of many pays for this
        with os.scandir(target.parent) as entries:
            names = sorted(entry.name for entry in entries if entry.name.startswith(prefix))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        item = target.parent / name
        match = _LEFTOVER.match(name)
        if (match is None or match["name"] != target.name
                or match["suffix"] not in ("", "".join(target.suffixes), suffix)
                or process_alive(int(match["pid"]))):
            continue
        with contextlib.suppress(OSError):  # another user's, or taken by another writer tidying meanwhile
            if match["kind"] == "previous" and not os.path.lexists(target):
                os.rename(item, target)
            else:
                with _unheld(item) as free:
                    if not free:
                        continue
                    if item.is_dir() and not item.is_symlink():
                        shutil.rmtree(item, ignore_errors=True)
                    else:
                        item.unlink(missing_ok=True)


@contextlib.contextmanager
def _unheld(item: Path) -> Iterator[bool]:
    """Whether no writer holds the staged file or folder ``item`` (the ``flock`` of
    :func:`staged_file` or :func:`staged_folder`): one whose pid looked gone from here, in another
    pid namespace or on another host, may still hold it. A free ``item`` stays locked by this
    process for the block, while it is removed: a writer that has just made it and waits for its
    lock then finds it gone, and makes another (:func:`_created_held`)."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    try:
        fd = os.open(item, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:  # gone already, or a symlink (no writer stages one): free; else, e.g. another
        yield exc.errno in (errno.ENOENT, errno.ELOOP)  # user's 0600 file, it may be held: left alone
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            free = True
        except BlockingIOError:
            free = False
        except OSError:  # no locks on this filesystem: the pid alone decides
            free = True
        yield free
    finally:
        os.close(fd)


def staged_file(target: Path, suffix: str = "") -> Path:
    """Tidy dead writers' leftovers beside ``target``, then create (0600) and return an empty
    staging file for it, named by :func:`sibling`, ending in ``suffix`` or else ``target``'s
    suffixes (libraries that choose a format by extension see the right one). The file is held
    under an exclusive ``flock`` until :func:`let_go`, which its writer calls once it is done."""
    suffix = suffix or "".join(target.suffixes)
    clean_leftovers(target, suffix)
    staged, fd = _created_held(target, suffix, lambda path: os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    _HELD[str(staged)] = fd
    return staged


def staged_folder(target: Path) -> Path:
    """Tidy dead writers' leftovers beside ``target``, then create and return an empty staging
    folder for it, named by :func:`sibling` and held under an exclusive ``flock`` until
    :func:`let_go`, as :func:`staged_file` holds a file."""
    clean_leftovers(target)
    staged, fd = _created_held(target, "", _new_folder)
    info = os.fstat(fd)
    _HELD[str(staged)] = fd
    _HELD_FOLDERS[(info.st_dev, info.st_ino)] = str(staged)
    return staged


def _new_folder(path: Path) -> int | None:
    """Create the folder ``path`` and open it; None where it was removed before it could be opened
    (a tidying writer took it for a leftover). It is removed again if it cannot be opened."""
    os.mkdir(path)
    try:
        return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        return None
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise


def _created_held(target: Path, suffix: str, create: Callable[[Path], int | None]) -> tuple[Path, int]:
    """A new staging file or folder for ``target`` (``create`` makes it and returns a descriptor,
    None where it vanished at once) and that descriptor, holding its exclusive ``flock``. Between
    its creation and the lock, another writer tidying (one in another pid namespace, to which this
    pid looks gone) may take it for a leftover: that writer removes it holding a lock of its own
    (:func:`_unheld`), so once the lock is held the name is checked to name still the file or
    folder locked (device and inode: not one made again under it meanwhile), and else replaced by
    a new one; after :data:`_TRIES` names in a row gone, DataError. One whose writer is stopped
    (Ctrl-C) while waiting for the lock is removed again."""
    for _ in range(_TRIES):
        staged = sibling(target, "staging", suffix)
        fd = create(staged)
        if fd is None:
            continue
        try:
            with contextlib.suppress(ImportError, OSError):  # no locks here: the pid alone tells
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a tidying writer looks at it
            if _same_file(fd, staged):
                return staged, fd
        except BaseException:
            with contextlib.suppress(OSError):
                if _same_file(fd, staged):  # not when gone, or another's made under its name meanwhile
                    (os.rmdir if stat.S_ISDIR(os.fstat(fd).st_mode) else os.unlink)(staged)
            os.close(fd)
            raise
        os.close(fd)
    raise DataError(f"cannot stage a write in {target.parent}: each of {_TRIES} staging names made there was "
                    "removed before it could be locked")


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file or folder open as ``fd`` (not one made again under its
    name once it was removed)."""
    try:
        named = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def let_go(*staged: Path) -> None:
    """Release the lock :func:`staged_file` or :func:`staged_folder` holds on each of ``staged``
    (once it is renamed into place or removed); paths neither staged are passed over."""
    for path in staged:
        fd = _HELD.pop(str(path), None)
        if fd is not None:
            with contextlib.suppress(OSError):
                info = os.fstat(fd)
                if _HELD_FOLDERS.get((info.st_dev, info.st_ino)) == str(path):
                    del _HELD_FOLDERS[(info.st_dev, info.st_ino)]
            os.close(fd)


def make_folder(target: Path) -> list[Path]:
    """Create ``target`` and the folders above it that are missing; returns those it made,
    deepest first (what a failed write removes again)."""
    made, above = [], target
    while not above.exists() and above != above.parent:
        made.append(above)
        above = above.parent
    target.mkdir(parents=True, exist_ok=True)
    return made


def remove_empty(made: list[Path]) -> None:
    """Remove the folders a failed write made (:func:`make_folder`), deepest first, as far as
    they are empty: another writer may have landed its files in them meanwhile."""
    for folder_made in made:
        try:
            folder_made.rmdir()
        except OSError:
            break


def new_mode(target: Path) -> int:
    """The mode a file renamed onto ``target`` gets: a staged file is made 0600; the file it
    replaces keeps its mode, a new one gets what the umask gives any other new file (a bundle or
    a SEG is read by other users: Triton, a PACS forwarder)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode) & 0o777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc/self/status; a
    few microseconds beside the write it serves, and a umask changed meanwhile is followed)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: read by setting it, and set it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def folder_flocked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself (no lock file is left in it), waiting for
    another holder; no lock where the OS or the filesystem has none. Every writer of a set of
    outputs renames its files into place under it, so two sets never mix. A staging folder this
    process holds (:func:`staged_folder`) is taken as locked already."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) not in _HELD_FOLDERS:  # this process's staging folder: held already
            with contextlib.suppress(OSError):  # e.g. ENOLCK on a filesystem without locks
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
