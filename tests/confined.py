"""Run a command the way a hardened container runs it: as an unprivileged user, with the root
filesystem read-only, HOME and TMPDIR unset, and one folder writable (the command's output).

:func:`confined` starts the command in a private mount namespace (``unshare --mount``), where
``/`` is remounted read-only and the writable folder is bound onto itself read-write, then drops
to ``uid`` with ``setpriv``: real permission failures, not mocks. It needs root (to mount and to
change user); tests skip elsewhere. Nothing it mounts is seen outside the namespace, which ends
with the command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

NOBODY = 65534
# where the command sees its writable folder
OUT = Path("/run/edgeseg-out")
# variables that would name a writable place for the command: a container sets none of them
UNSET = ("HOME", "TMPDIR", "TEMP", "TMP", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "EDGESEG_CACHE_DIR",
         "MPLCONFIGDIR", "PYTHONPYCACHEPREFIX")


def _closed_ancestor(path: Path) -> Path | None:
    """The first folder above ``path`` that other users cannot enter (``/root`` for a pyenv
    interpreter), or None."""
    for folder in reversed(path.parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def _interpreter_mounts() -> str:
    """Shell lines that let other users reach this interpreter where it lies under a folder
    closed to them (a pyenv under /root): the closed folder is covered by an empty read-only one
    holding only the way to the interpreter, bound back."""
    real = Path(sys.executable).resolve()
    closed = _closed_ancestor(real)
    if closed is None:
        return ""
    child = closed / real.relative_to(closed).parts[0]
    below = [folder for folder in real.parents if folder == child or child in folder.parents]
    if not all(os.stat(folder).st_mode & stat.S_IXOTH for folder in below):
        pytest.skip(f"the interpreter {real} lies under folders other users cannot enter")
    closed, child = shlex.quote(str(closed)), shlex.quote(str(child))
    return (f"mkdir /run/keep && mount --bind {child} /run/keep && mount -t tmpfs -o mode=0755 none {closed} && "
            f"mkdir {child} && mount --bind /run/keep {child} && mount -o remount,ro,bind {closed} && ")


# Every other mount too (a /tmp or /var/tmp of its own, a /home): a remount of / leaves them
# writable. /proc, /sys and /dev stay as a container has them; /run and the output are done above.
_READ_ONLY_MOUNTS = ("for m in $(cut -d' ' -f2 /proc/self/mounts); do case $m in /|/proc*|/sys*|/dev*|/run*) ;; "
                     "*) mount -o remount,bind,ro \"$m\" || exit 3;; esac; done && ")


def confined(args: list, writable: Path, uid: int = NOBODY, cwd: str = "/", env: dict | None = None,
             timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run ``args`` as ``uid``, in ``cwd``, with only ``writable`` (made and given to ``uid``)
    writable, seen by the command as :data:`OUT` (pytest's folders are closed to other users);
    see the module docstring. ``env`` adds variables. Skips where this cannot be arranged."""
    assert uid != 0, "a confined command runs as an unprivileged user, never root"
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("confining a command needs root, unshare and setpriv (util-linux)")
    writable.mkdir(parents=True, exist_ok=True)
    os.chown(writable, uid, NOBODY)
    # /run: a fresh tmpfs, private to the namespace, made read-only once the mounts are in place
    setup = (f"mount -t tmpfs -o mode=0755 none /run && mkdir {OUT} && mount --bind {shlex.quote(str(writable))} {OUT} && "
             + _interpreter_mounts() + "mount -o remount,ro /run && mount -o remount,bind,ro / && " + _READ_ONLY_MOUNTS
             + f"cd {shlex.quote(cwd)} && exec setpriv --reuid={uid} --regid={NOBODY} --clear-groups -- \"$@\"")
    base = {key: value for key, value in os.environ.items() if key not in UNSET}
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "confined", *map(str, args)]
    done = subprocess.run(command, env=dict(base, OMP_NUM_THREADS="1", **(env or {})), capture_output=True,
                          text=True, timeout=timeout, **popen)
    if done.returncode != 0 and "mount" in done.stderr and "permission denied" in done.stderr.lower():
        pytest.skip(f"no mount namespace here: {done.stderr.strip()}")
    return done
