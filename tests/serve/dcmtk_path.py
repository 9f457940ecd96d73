"""dcmtk's tools before pynetdicom's apps of the same names.

The ``dicom`` extra installs pynetdicom, whose apps ``storescu``, ``echoscu``, ``storescp`` ...
land in the venv's bin/. With the venv active (as the README has it), they come first on PATH and
the tests, written against dcmtk's options (``-R``, ``-xr``, ``-d``, ``+sd``), got pynetdicom's:
``storescu: error: unrecognized arguments: -R``. :func:`dcmtk_first` puts the first dcmtk tool of
each such name found on PATH first, through a folder of links to them; :func:`dcmtk_tool` is the
test's check that dcmtk's tool is installed at all (pynetdicom's alone does not count)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

TOOLS = ("echoscu", "storescu", "storescp", "findscu", "movescu", "getscu")


def _is_script(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def dcmtk_tool(name: str, path: str | None = None) -> str | None:
    """The first dcmtk ``name`` on ``path`` (PATH by default): the first executable file of that
    name that is not a script, as pynetdicom's apps are; None where only those are installed."""
    path = os.environ.get("PATH", "") if path is None else path
    for folder in path.split(os.pathsep):
        candidate = Path(folder) / name
        if folder and candidate.is_file() and os.access(candidate, os.X_OK) and not _is_script(candidate):
            return str(candidate)
    return None


def missing_dcmtk(*names: str) -> str | None:
    """A skip reason naming the dcmtk tools of ``names`` not installed (on PATH), or None."""
    missing = [name for name in names if dcmtk_tool(name) is None]
    return f"dcmtk ({', '.join(missing)}) is not installed: apt-get install dcmtk" if missing else None


@functools.lru_cache(maxsize=None)  # one folder of links per PATH value, not one per module
def dcmtk_first(path: str) -> str:
    """``path`` (a PATH value) with a folder of links to dcmtk's tools put first where a script of
    the same name (pynetdicom's app) would be found before them; ``path`` itself otherwise."""
    links = {}
    for tool in TOOLS:
        found = [Path(d) / tool for d in path.split(os.pathsep) if d and os.access(Path(d) / tool, os.X_OK)]
        if found and _is_script(found[0]):
            real = next((p for p in found if not _is_script(p)), None)
            if real is not None:
                links[tool] = real
    if not links:
        return path
    folder = tempfile.mkdtemp(prefix="edgeseg-dcmtk-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for tool, real in links.items():
        os.symlink(real, Path(folder) / tool)
    return os.pathsep.join([folder, path])
