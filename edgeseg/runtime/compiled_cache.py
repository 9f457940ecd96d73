"""Compiled-model cache entries: what an engine built from an artifact, kept only while verified.

Compiling (OpenVINO) or optimising (ONNX Runtime) an ONNX artifact dominates a process's cold
start, so both runners keep the engine's result in ``$EDGESEG_CACHE_DIR/ENGINE/NAME/`` (default
``~/.cache/edgeseg``). ``NAME`` is ``SHA16-KEY12``: the first 16 hex digits of the artifact's
sha256 (the hash the bundle manifest records and the runtime verifies) and 12 of the sha256 of
the engine's key string (engine name, its version, and the settings that change what it
builds), so a re-exported model, a new engine release or other settings never meet an old entry.

An entry is a folder of the engine's files plus ``entry.sha256``, one ``HEX SIZE NAME`` line per
file. It is built in a private ``.partial-*`` folder and published with one ``rename``, so no
reader sees half of it; before it is used, every file's size and sha256 are checked against the
record and no unrecorded file may be present. Anything else (a truncated or flipped blob, a
missing record, a file the engine added later) makes the entry stale: it is moved aside,
deleted and rebuilt, never loaded. The record says only that an entry is whole, not who made
it, so the cache is used only where no other user could have written it: the root, the engine
folder, the entry and its files must belong to this user and be writable by no group and no
other user (:func:`untrusted`); otherwise the engine builds without the cache and a warning
names the folder. The folders are made ``0700``. A process killed while it builds or deletes leaves its
``.partial-*`` or ``.stale-*`` folder; the next cache miss in the same engine folder removes
those an hour old (:data:`ORPHAN_SECONDS`). libedgeseg (csrc/runtime/compiled_cache.c) reads and writes
the same layout, so the C and the Python runtime share OpenVINO entries.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

RECORD = "entry.sha256"
# Age (since its last change) at which a private build folder or an entry moved aside for deletion
# is taken for a killed process's leftover. A PID cannot say whether its writer is gone (the
# cache may be shared with processes in another PID namespace, a container); no build takes an hour.
ORPHAN_SECONDS = 3600
T = TypeVar("T")


def cache_root() -> Path:
    """``$EDGESEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgeseg``, else ``~/.cache/edgeseg``.

    OSError where there is no home folder (HOME unset and a user with no passwd entry, as
    container platforms run images): ``~`` would stay unexpanded, a folder named ``~`` in the
    current folder. Callers use no cache then, as libedgeseg does without HOME."""
    root = os.environ.get("EDGESEG_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") and os.path.join(
        os.environ["XDG_CACHE_HOME"], "edgeseg")
    if root:
        return Path(root)
    home = os.path.expanduser("~")
    if not os.path.isabs(home):
        raise OSError(errno.ENOENT, f"HOME is unset and user {os.getuid()} has no home folder", "~/.cache/edgeseg")
    return Path(home, ".cache", "edgeseg")


def entry_name(artifact_sha256: str, engine_key: str) -> str:
    """``SHA16-KEY12``: the folder name of the entry for one artifact and one engine key."""
    return f"{artifact_sha256[:16]}-{hashlib.sha256(os.fsencode(engine_key)).hexdigest()[:12]}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _remove(folder: Path) -> None:
    import shutil  # here: a cache hit, the cold start that counts, removes nothing

    shutil.rmtree(folder, ignore_errors=True)


def is_leftover_name(name: str) -> bool:
    """A private build folder (``.partial-*``) or an entry moved aside for deletion (Python's
    ``.stale-NAME-*``, libedgeseg's ``NAME.stale-*``)."""
    return name.startswith(".partial-") or ".stale-" in name


def untrusted(path: Path, follow: bool = False) -> str | None:
    """Why another local user could have written or replaced ``path`` (a cache folder or file),
    or None when only this user (and root) can: it must be no symbolic link (unless ``follow``),
    belong to this process's effective user, and be writable by no group and no other user. A
    path that does not exist is None: nothing is read from it."""
    try:
        info = os.stat(path) if follow else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if info.st_uid != os.geteuid():
        return f"{path} belongs to uid {info.st_uid}, not to this user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def _make_private(folder: Path) -> None:
    """Make ``folder`` and the missing folders up to the cache root ``0700`` (a umask of 002
    would otherwise give them group write, which :func:`untrusted` refuses)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process; checked before use
            os.mkdir(path, 0o700)


def sweep_leftovers(folder: Path, now: float | None = None) -> None:
    """Remove the leftovers in an engine ``folder`` unchanged for :data:`ORPHAN_SECONDS`."""
    now = time.time() if now is None else now
    try:
        items = list(os.scandir(folder))
    except OSError:
        return
    for item in items:
        try:
            old = now - item.stat(follow_symlinks=False).st_mtime > ORPHAN_SECONDS
            if is_leftover_name(item.name) and old and item.is_dir(follow_symlinks=False):
                _remove(Path(item.path))
        except OSError:
            continue  # taken by another process meanwhile


class CompiledModelCache:
    """One entry of the cache: ``root/engine/entry_name(artifact_sha256, engine_key)``.

    Args:
        engine: the engine's folder under the root (``openvino``, ``onnxruntime``).
        artifact_sha256: the artifact's sha256 from the manifest (already verified on load).
        engine_key: engine name, version and build settings as one string.
        root: the cache root; :func:`cache_root` by default.
    """

    def __init__(self, engine: str, artifact_sha256: str, engine_key: str, root: Path | None = None) -> None:
        try:
            self.root: Path | None = root or cache_root()
        except OSError as exc:  # no home folder: the engine builds without a cache
            log.debug("compiled-model cache not used: %s", exc.strerror)
            self.root = None
        self.folder = Path(self.root or "", engine)
        self.path = self.folder / entry_name(artifact_sha256, engine_key)

    def untrusted(self) -> str | None:
        """Why another user could have put or replaced entries here (see :func:`untrusted`), or
        None: the root (a link to it is followed: it is the user's own setting) and the engine folder."""
        return untrusted(self.root, follow=True) or untrusted(self.folder)

    def verified(self) -> bool:
        """True when the entry exists and every file matches its record, with nothing extra."""
        try:
            lines = (self.path / RECORD).read_text().splitlines()
            recorded = {}
            for line in lines:
                digest, size, name = line.split(" ", 2)
                recorded[name] = (digest, int(size))
            present = {p.name for p in self.path.iterdir()} - {RECORD}
            if not recorded or present != set(recorded):
                return False
            if any(untrusted(path) for path in (self.path, self.path / RECORD, *(self.path / name for name in recorded))):
                return False
            return all(stat.S_ISREG(os.lstat(self.path / name).st_mode) and (self.path / name).stat().st_size == size
                       and _file_sha256(self.path / name) == digest for name, (digest, size) in recorded.items())
        except (OSError, ValueError):
            return False

    def discard(self) -> None:
        """Move the entry aside (one rename, so no reader meets it half-deleted) and delete it."""
        trash = self.folder / f".stale-{self.path.name}-{os.urandom(4).hex()}"
        try:
            os.rename(self.path, trash)
        except OSError:
            return  # already gone (or taken by another process)
        _remove(trash)

    def new_folder(self) -> Path | None:
        """A private, empty folder for the engine to build into; None when the cache is not writable.
        A miss is also when killed processes' leftovers are cleared (:func:`sweep_leftovers`)."""
        sweep_leftovers(self.folder)
        partial = self.folder / f".partial-{self.path.name}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            _make_private(self.folder)
            if self.untrusted():  # made meanwhile by someone else
                return None
            partial.mkdir(0o700)
        except OSError:
            return None
        return partial

    def publish(self, partial: Path) -> bool:
        """Record the files of ``partial`` and rename it into place; False (and ``partial`` gone)
        when the engine wrote nothing or another process published first."""
        try:
            files = sorted(p for p in partial.iterdir() if p.is_file())
            if not files:
                _remove(partial)
                return False
            from edgeseg.atomic import atomic_write_text  # only when publishing a new entry

            for p in files:  # the engine's files get the umask's mode; group write would untrust them
                os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~0o022)
            atomic_write_text(partial / RECORD, "".join(
                f"{_file_sha256(p)} {p.stat().st_size} {p.name}\n" for p in files))
            os.chmod(partial / RECORD, stat.S_IMODE((partial / RECORD).stat().st_mode) & ~0o022)
            os.rename(partial, self.path)
            return True
        except OSError as exc:
            log.debug("compiled-model cache entry %s not published: %s", self.path, exc)
            _remove(partial)
            return False

    def load(self, build: Callable[[Path | None, bool], T]) -> T:
        """``build(folder, hit)`` through the cache.

        With a verified entry, ``build(entry, True)``; if that raises (the engine refuses files
        whose hashes match, e.g. from another build of it), the entry is discarded. Otherwise
        ``build(partial, False)`` into a new private folder that is then published, or
        ``build(None, False)`` when the cache cannot be written or building into it failed.
        """
        if self.root is None:
            return build(None, False)
        problem = self.untrusted()
        if problem:
            log.warning("compiled-model cache not used: %s (another user could plant a model there); "
                        "the engine builds without it", problem)
            return build(None, False)
        if self.verified():
            try:
                return build(self.path, True)
            except Exception as exc:  # noqa: BLE001 - engines raise their own types; rebuilt below
                log.warning("compiled-model cache entry %s did not load (%s); rebuilding it", self.path, exc)
        if self.path.exists():
            self.discard()
        partial = self.new_folder()
        if partial is None:
            return build(None, False)
        try:
            result = build(partial, False)
        except Exception:  # noqa: BLE001 - e.g. a full disk while writing the cache: build without it
            _remove(partial)
            return build(None, False)
        self.publish(partial)
        return result
