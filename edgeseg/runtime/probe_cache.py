"""The backend probe's record on disk: where ``auto``'s choices are kept, and under which key.

``$EDGESEG_CACHE_DIR/backend-probe.json`` (default ``~/.cache/edgeseg``) maps a key (the
manifest's sha256, the host, the thread count, the backend versions) to the chosen backend and
the timings it was chosen on. Reading it takes no lock: it is replaced whole (atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from pathlib import Path

from edgeseg.runtime.machine import cpu_model, installed_versions
from edgeseg.runtime.manifest import MANIFEST_NAME

log = logging.getLogger(__name__)

CACHE_NAME = "backend-probe.json"
KEY_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch")


def probe_key(bundle: Path, threads: int) -> str:
    """Cache key: the manifest's sha256, the host, the thread count and the backend versions."""
    manifest_sha = hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()[:16]
    found = installed_versions(KEY_DISTRIBUTIONS)
    versions = [f"{dist}={found.get(dist, 'absent')}" for dist in KEY_DISTRIBUTIONS]
    host = f"{platform.node()}|{platform.machine()}|{os.cpu_count()}|{cpu_model()}"
    return f"{manifest_sha}|{host}|threads={threads}|{','.join(versions)}"


def cache_path() -> Path:
    """Where the probe results live: ``$EDGESEG_CACHE_DIR`` or the user cache folder."""
    root = os.environ.get("EDGESEG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeseg")
    return Path(root) / CACHE_NAME


def read_cache() -> dict:
    """Every recorded probe, by key; empty where there is no cache yet or a damaged one."""
    path = cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: dict) -> None:
    """Record one probe: the cache is read again and written whole under a lock, so processes
    probing other bundles at the same time (a sweep's points, parallel tests) keep each other's
    entries rather than the last writer's copy alone."""
    import fcntl

    from edgeseg.atomic import atomic_write_text  # only when probing: it imports tempfile, secrets

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            cache = read_cache()
            cache[key] = entry
            atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    except OSError as exc:  # a read-only home must not stop inference
        log.warning("cannot write the backend probe cache %s: %s", path, exc)
