"""The folder a server keeps its work files in (``serve``'s upload bodies, ``listen``'s received
images), checked when it starts.

Python's :func:`tempfile.gettempdir` passes over a ``TMPDIR`` it cannot write in and takes
``/tmp``, ``/var/tmp`` or the current folder without a word, and where none of them can be
written in (a container with a read-only root filesystem) its error names neither the variable
nor the option that moves the files. All three cases are refused here, in one line, before the
model loads: the current folder is Python's last resort, not a place anyone chose for work files
(a container's working folder is often its output).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from edgeseg.errors import DataError

# the folders tempfile tries after the variables and before the current folder (POSIX)
_SYSTEM_TEMP_FOLDERS = ("/tmp", "/var/tmp", "/usr/tmp")


def check_work_folder(folder: str | os.PathLike | None, option: str | None, what: str) -> Path:
    """The folder ``what`` will be written in: ``folder`` (given as ``option``), else the one
    ``TMPDIR`` names, else the temporary folder Python finds. DataError, naming the folder and
    what moves it, when it is not a folder this process can create files in, or when Python
    would fall back to the current folder."""
    moved_by = f"TMPDIR or {option}" if option else "TMPDIR"
    if folder is not None:
        where, named = Path(folder), f"{option} {folder}"
    elif os.environ.get("TMPDIR"):
        where, named = Path(os.environ["TMPDIR"]), f"TMPDIR {os.environ['TMPDIR']}"
    else:
        try:
            found = tempfile.gettempdir()
        except FileNotFoundError:  # no candidate can be written in
            raise DataError(f"no temporary folder can be written in ({what} are written there): "
                            f"/tmp, /var/tmp and the current folder are not writable; set {moved_by} "
                            "to a writable folder") from None
        if _is_the_last_resort(found):
            raise DataError(f"no temporary folder can be written in ({what} are written there): /tmp and "
                            f"/var/tmp are not writable, and Python would use the current folder {found}; "
                            f"set {moved_by} to a writable folder")
        return Path(found)
    if not where.is_dir():
        raise DataError(f"{named} is not a folder ({what} are written there)")
    try:
        os.rmdir(tempfile.mkdtemp(prefix="edgeseg-work-check-", dir=where))
    except OSError as exc:
        raise DataError(f"{named} is not a folder this process can write in ({what} are written there): "
                        f"{exc.strerror}; set {moved_by} to a writable folder") from None
    return where


def _is_the_last_resort(found: str) -> bool:
    """Whether ``tempfile`` took ``found`` because it is the current folder, not because a
    variable (TEMP, TMP) or the system's list named it."""
    if sys.platform == "win32":
        return False  # another list there; the current folder is not its last entry alone
    named = {os.path.abspath(os.environ[name]) for name in ("TEMP", "TMP") if os.environ.get(name)}
    return found not in named and found not in _SYSTEM_TEMP_FOLDERS
