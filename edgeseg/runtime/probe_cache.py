"""The backend probe's record on disk: where ``auto``'s choices are kept, under which key, and
the lock that makes processes share one probe.

``$EDGESEG_CACHE_DIR/backend-probe.json`` (default ``~/.cache/edgeseg``) maps a key (the
manifest's sha256, the host, the thread count, the backend versions) to the chosen backend and
the timings it was chosen on. Reading it takes no lock: it is replaced whole (atomic rename).

Probing takes ``backend-probing.lock`` in the same folder (``flock``, which the kernel drops when
its holder exits, killed or not), from checking the cache to recording the choice. A process
that needs a probe while another measures waits, then takes that choice from the cache if it
was for its key: several server processes, Triton instances or parallel jobs starting on one
bundle measure once and run the same backend. The lock is one for all bundles, not one per
key: a probe compares latencies of a few ms, and another process probing another bundle on the
same CPUs at the same time would slow some of its candidates and not others, and the skewed
choice stays cached for as long as the bundle and libraries do. Waiting costs the length of
the probes ahead (seconds; more for large models on many backends), once per bundle and
machine; a process whose choice is cached never waits.

A choice that cannot be recorded is not measured: where the folder cannot be written (a
read-only root, no home, no ``EDGESEG_CACHE_DIR``) every start would measure again and could
pick another backend, and so other masks, after each restart. There :func:`probe_lock` yields
False with one warning (:data:`NOT_KEPT`), and ``auto`` takes the first loadable backend of its
fixed order, the same at every start (``edgeseg.runtime.selection``).

The wait is bounded (``$EDGESEG_PROBE_WAIT`` seconds, default :data:`PROBE_WAIT_SECONDS`): a
holder that hangs alive (stopped, stuck on a GPU driver or a network filesystem) is never
dropped by the kernel, and a server or a Triton instance starting behind it would wait forever.
Past the bound the load takes the fixed order, with one warning, as where the folder cannot be
written: nothing it chose could be recorded while the holder keeps the lock, and refusing would
leave the service down for the sake of a few ms of latency.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from edgeseg.errors import BackendError
from edgeseg.runtime.machine import cpu_model, installed_versions
from edgeseg.runtime.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

CACHE_NAME = "backend-probe.json"
PROBE_LOCK_NAME = "backend-probing.lock"
# the end of each warning about a cache that cannot be used
MOVE_CACHE = "set EDGESEG_CACHE_DIR to a writable folder to keep it"
# the end of the warning where auto's choice cannot be recorded
NOT_KEPT = ("backend auto chooses without measuring, by its fixed order, the same at every start; set "
            "EDGESEG_CACHE_DIR to a writable folder to measure once and keep the choice, or name one with --backend")
# Longer than any probe measured here (a few seconds; tens for large models on every backend)
# by a wide margin: a holder still probing is waited for, only one that hangs is not.
PROBE_WAIT_SECONDS = 600.0
PROBE_WAIT_ENV = "EDGESEG_PROBE_WAIT"
_POLL_SECONDS = 0.1


def probe_key(bundle: Path, threads: int) -> str:
    """Cache key: the manifest's sha256, the host, the thread count and the version of every
    runner's library (each runner names its distributions: a backend added, upgraded or removed
    measures again)."""
    from edgeseg.runtime.runners import library_distributions

    manifest_sha = hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    names = library_distributions()
    found = installed_versions(names)
    versions = [f"{dist}={found.get(dist, 'absent')}" for dist in names]
    host = f"{platform.node()}|{platform.machine()}|{os.cpu_count()}|{cpu_model()}"
    return f"{manifest_sha}|{host}|threads={threads}|{','.join(versions)}"


def cache_path() -> Path:
    """Where the probe results live: ``$EDGESEG_CACHE_DIR`` or the user cache folder; OSError
    where there is no home folder (see :func:`~edgeseg.runtime.compiled_cache.cache_root`)."""
    from edgeseg.runtime.compiled_cache import cache_root

    return cache_root() / CACHE_NAME


def read_cache() -> dict:
    """Every recorded probe, by key; empty where there is no cache yet or a damaged one."""
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: dict) -> None:
    """Record one probe: the cache is read again and written whole under a lock, so processes
    probing other bundles at the same time (a sweep's points, parallel tests) keep each other's
    entries rather than the last writer's copy alone."""
    import fcntl

    from edgeseg.atomic import atomic_write_text  # only when probing: it imports tempfile, secrets

    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cache = read_cache()
            cache[key] = entry
            atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    except OSError as exc:  # a read-only home must not stop inference
        log.warning("cannot write the backend probe cache %s: %s; %s", exc.filename, exc.strerror or exc, MOVE_CACHE)


# flock is per open file, so threads of one process would exclude each other through it too; the
# thread lock makes them take turns also where the file lock cannot be had.
_PROBING = threading.Lock()
# The descriptor holding the file lock while this process probes. A child forked meanwhile
# shares its open file, and so the lock, for as long as it keeps a copy: it closes its copy at
# once, or every other process's probe would wait for that child to exit.
_held: list[int] = []


@contextlib.contextmanager
def probe_lock() -> Iterator[bool]:
    """Held while this process probes: the machine's one probe at a time (see the module's
    docstring). Yields True when held, so the cache is worth reading again and the choice worth
    recording; False where the cache folder cannot be written or locked, or another process holds
    the lock past the bound (one warning), where nothing chosen could be recorded."""
    with _PROBING:
        fd = _acquire()
        if fd is not None:
            _held.append(fd)
        try:
            yield fd is not None
        finally:
            if fd in _held:  # not after a fork: the child closed its copy then
                _held.remove(fd)
                os.close(fd)  # the last copy closed drops the flock


def probe_wait_seconds() -> float:
    """How long a probe waits for another process's: ``$EDGESEG_PROBE_WAIT`` or the default;
    BackendError for a value that is no number of seconds from 0 up."""
    text = os.environ.get(PROBE_WAIT_ENV, "").strip()
    if not text:
        return PROBE_WAIT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds < float("inf"):
        raise BackendError(f"{PROBE_WAIT_ENV} must be a number of seconds from 0 up, got {text[:40]!r}")
    return seconds


def _acquire() -> int | None:
    wait = probe_wait_seconds()  # before the lock file: a bad value is refused, not waited on
    fd = path = None
    try:
        path = cache_path().with_name(PROBE_LOCK_NAME)
        path.parent.mkdir(parents=True, exist_ok=True)
        # read-only: a lock file another user created in a shared cache folder still opens
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        if _flock_within(fd, path, wait):
            _check_writable(path.parent)  # the lock file of a read-only folder may open (it exists)
            return fd
        os.close(fd)
        log.warning("another process has held the backend probe lock %s for over %g s (%s=%g); %s", path, wait,
                    PROBE_WAIT_ENV, wait, NOT_KEPT)
        return None
    except OSError as exc:  # a read-only home, a filesystem without flock (ENOLCK)
        if fd is not None:
            os.close(fd)
        log.warning("cannot use the backend probe cache in %s (%s); %s",
                    exc.filename if path is None else path.parent, exc, NOT_KEPT)
        return None


def _check_writable(folder: Path) -> None:
    """OSError where the probe cache in ``folder`` cannot be replaced (what :func:`write_cache`
    does: a file made beside it and renamed over it, under its lock file)."""
    lock = folder / (CACHE_NAME + ".lock")
    for path in (folder, lock):
        if path.exists() and not os.access(path, os.W_OK):
            raise OSError(errno.EACCES, "not writable by this user, or on a read-only filesystem", str(path))


def _flock_within(fd: int, path: Path, wait: float) -> bool:
    """Take the exclusive flock on ``fd`` within ``wait`` seconds; False where it stays held.
    Polled: flock has no timeout, and an alarm signal to cut a blocking one works only in the
    main thread, where servers load bundles from worker threads too."""
    import fcntl

    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
        if not announced:
            log.info("another process is probing backends on this machine (%s); waiting for it", path)
            announced = True
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


def _forget_inherited_lock() -> None:
    global _PROBING
    for fd in _held:
        os.close(fd)
    _held.clear()
    _PROBING = threading.Lock()  # the thread that held it was not copied into this process


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork (nor fcntl)
    os.register_at_fork(after_in_child=_forget_inherited_lock)
