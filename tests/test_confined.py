"""The confinement the container tests rely on (tests/confined.py) holds: were it to let a
command write where a hardened container would not, or run it as root, those tests would pass
without testing anything."""

from __future__ import annotations

import sys

from tests.confined import NOBODY, OUT, UNSET, confined

PROBE = """
import os, sys
places = {"root": "/", "tmp": "/tmp", "var-tmp": "/var/tmp", "run": "/run", "out": sys.argv[1]}
for name, folder in places.items():
    try:
        with open(os.path.join(folder, "probe"), "w") as f:
            f.write("x")
        print(name, "writable")
    except OSError as exc:
        print(name, "refused", exc.errno)
print("uid", os.getuid(), os.geteuid(), "gid", os.getgid(), "groups", os.getgroups())
print("unset", sorted(k for k in sys.argv[2].split(",") if k in os.environ))
"""


def test_a_confined_command_runs_as_nobody_and_writes_only_its_folder(tmp_path):
    out = tmp_path / "out"
    done = confined([sys.executable, "-c", PROBE, OUT, ",".join(UNSET)], out)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:5] == ["root refused 30", "tmp refused 30", "var-tmp refused 30", "run refused 30", "out writable"]
    assert lines[5] == f"uid {NOBODY} {NOBODY} gid {NOBODY} groups []"
    assert lines[6] == "unset []"
    assert (out / "probe").read_text() == "x"  # the folder it wrote is the test's, seen from outside
    assert not (tmp_path.parent / "probe").exists()
