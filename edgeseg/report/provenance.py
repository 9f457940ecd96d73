"""Provenance: the command, software and machine a result was made with, so it can be made again.

Training writes it into its checkpoints and ``metrics.json``, export into the bundle manifest,
evaluation into ``eval.json``. Float results depend on more than the seed (the library versions,
the CPU's instruction sets, the number of threads: docs/training.md, "What repeats exactly"), so
each of them is recorded beside the result rather than assumed.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgeseg import __version__

# The libraries whose versions change the numbers: training and the exported graphs (torch,
# numpy), the ONNX passes and quantiser (onnx, onnxslim, onnxruntime), the readers; and the
# runners' own, which each runner names (edgeseg.runtime.runners.library_distributions).
LIBRARIES = ("torch", "numpy", "onnx", "onnxslim", "onnxruntime", "scipy", "nibabel", "pydicom")


def environment() -> dict[str, Any]:
    """The command line, working folder, edgeseg version (and git commit of a source checkout),
    Python and library versions, and the machine (``machine_signature``) of this process."""
    from edgeseg.runtime.machine import installed_versions, machine_signature
    from edgeseg.runtime.runners import library_distributions

    try:
        cwd = os.getcwd()
    except OSError:  # the folder was removed under the process
        cwd = None
    return {
        "command": shlex.join(sys.argv),
        "cwd": cwd,
        "edgeseg": __version__,
        **source_commit(),
        "python": platform.python_version(),
        "libraries": dict(sorted(installed_versions((*LIBRARIES, *library_distributions())).items())),
        "machine": machine_signature(),
        "platform": platform.platform(),
        "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def valid_unicode(value: Any) -> Any:
    """``value`` with every string (keys too, in nested dicts and lists) made valid Unicode: a
    path or argument that is not UTF-8 reaches Python as lone surrogates (``lat\\udce9``), which
    json writes as ``\\udce9`` and both runtimes refuse in a manifest; its bytes are written as
    ``\\xe9`` instead."""
    if isinstance(value, dict):
        return {valid_unicode(k): valid_unicode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [valid_unicode(v) for v in value]
    if not isinstance(value, str) or not any("\ud800" <= c <= "\udfff" for c in value):
        return value  # only lone surrogates cannot be written as UTF-8
    try:  # a name's undecodable bytes, as Python's file system decoding escaped them
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # another lone surrogate
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def source_commit(root: str | Path | None = None) -> dict[str, Any]:
    """``{"git_commit": SHA, "git_dirty": bool}`` when edgeseg runs from a git checkout of its own
    source (``root``, default the folder above the package), else ``{}``: an installed wheel has
    no commit, and a package inside some other repository must not report that repository's."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return {}

    def git(*args: str) -> str:
        # GIT_OPTIONAL_LOCKS=0: reading the status must not take the index lock of a checkout
        # someone is committing in
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              env=env, check=True)
        return done.stdout

    try:
        top, commit = git("rev-parse", "--show-toplevel", "HEAD").split()
        if Path(top).resolve() != root.resolve():
            return {}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}
    return {"git_commit": commit, "git_dirty": dirty}
