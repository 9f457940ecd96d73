"""The runtime's caches where a container gives none: HOME unset, the root filesystem read-only,
only the output folder writable, as an unprivileged user (tests/confined.py; real permission
failures, no mocks). The command still works, writes only its output, and says which variable
gives it a cache."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.confined import OUT, confined

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
# a user with no entry in /etc/passwd, as container platforms run images under (no home folder)
UNNAMED_UID = 1000770000


def edgeseg(*args) -> list[str]:
    return [sys.executable, "-m", "edgeseg.cli", *map(str, args)]


def test_predict_writes_only_its_output_and_names_the_cache_variable(bundle_dir, tmp_path):
    done = confined(edgeseg("predict", bundle_dir, SERIES, "--out", OUT / "mask.nii.gz"), tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["mask.nii.gz"]
    # auto probes without its cache, and says which variable gives it one
    warnings = [line for line in done.stderr.splitlines() if line.startswith("edgeseg: warning:")]
    assert warnings and all("EDGESEG_CACHE_DIR" in line for line in warnings), done.stderr


def test_a_user_without_a_home_writes_no_tilde_folder(bundle_dir, tmp_path):
    # HOME unset and no passwd entry: "~/.cache" stays unexpanded, a path relative to the
    # current folder, where the cache must not be made
    done = confined(edgeseg("predict", bundle_dir, SERIES, "--out", OUT / "mask.nii.gz"), tmp_path / "out",
                    uid=UNNAMED_UID, cwd=str(OUT))
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["mask.nii.gz"]
    assert "EDGESEG_CACHE_DIR" in done.stderr
