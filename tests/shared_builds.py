"""Test fixtures built once per test run and shared by every pytest-xdist worker.

A session fixture is made once per worker: a thing several files use (the SDK the C API tests
compile against, a small trained bundle) was built again by each of the up to four workers those
files went to. ``build_once`` builds it in the run's own temporary folder, under a file lock: the
first worker to need it builds it, the others wait and reuse it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable


def run_folder(tmp_path_factory) -> Path:
    """The temporary folder of the whole run: under xdist each worker has its own basetemp inside
    the run's, without xdist the basetemp is the run's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def build_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` into ``folder`` (the run's temporary folder / ``name``) unless a worker
    has already finished it in this run; returns ``folder``, read-only by convention. A build
    that fails leaves no finished mark, so the next fixture request tries again."""
    from filelock import FileLock

    root = run_folder(tmp_path_factory)
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (root / f"{name}.done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (root / f"{name}.done").write_text("")
    return folder
