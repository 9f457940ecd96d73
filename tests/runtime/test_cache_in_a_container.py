"""The runtime's caches where a container gives none: HOME unset, the root filesystem read-only,
only the output folder writable, as an unprivileged user (tests/confined.py; real permission
failures, no mocks). The command still works, writes only its output, and says which variable
gives it a cache."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

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
    # auto chooses by its fixed order without a cache, and says which variable gives it one
    # (but the field-of-view warning: the dcmqi series is 415 mm, the test bundle was trained on 192 mm phantoms)
    warnings = [line for line in done.stderr.splitlines()
                if line.startswith("edgeseg: warning:") and "field of view" not in line]
    assert warnings and all("EDGESEG_CACHE_DIR" in line for line in warnings), done.stderr


def test_a_user_without_a_home_writes_no_tilde_folder(bundle_dir, tmp_path):
    # HOME unset and no passwd entry: "~/.cache" stays unexpanded, a path relative to the
    # current folder, where the cache must not be made
    done = confined(edgeseg("predict", bundle_dir, SERIES, "--out", OUT / "mask.nii.gz"), tmp_path / "out",
                    uid=UNNAMED_UID, cwd=str(OUT))
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["mask.nii.gz"]
    assert "EDGESEG_CACHE_DIR" in done.stderr


def _loaded_backend(stderr: str) -> str:
    """The backend a predict run names in its ``loaded BUNDLE: backend NAME:PRECISION`` line."""
    return re.search(r"^loaded .*: backend (\S+)", stderr, re.M).group(1)


def test_auto_without_a_cache_picks_the_same_backend_and_labels_at_every_start(bundle_dir, tmp_path):
    """Nothing can be kept (read-only root, no home, no EDGESEG_CACHE_DIR): auto chooses without
    measuring, by its fixed order, so two starts on one series run the same backend and write the
    same labels, with one warning naming the two ways to choose otherwise. It used to measure at
    every start: two confined runs picked openvino:fp32 and onnxruntime:int8 (8,790 and 8,390
    liver voxels). The expected backend is the fixed order's first, from an unconfined run that
    skips measuring (EDGESEG_BACKEND_PROBE=0)."""
    runs = [confined(edgeseg("predict", bundle_dir, SERIES, "--out", OUT / "mask.nii.gz"), tmp_path / f"out{n}")
            for n in range(2)]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert "probe at batch 1" not in done.stderr  # nothing was timed
        chose = [line for line in done.stderr.splitlines() if "chooses without measuring" in line]
        assert len(chose) == 1 and "EDGESEG_CACHE_DIR" in chose[0] and "--backend" in chose[0], done.stderr
    reference = subprocess.run(edgeseg("predict", bundle_dir, SERIES, "--out", tmp_path / "ref.nii.gz"), text=True,
                               capture_output=True, env=dict(os.environ, EDGESEG_BACKEND_PROBE="0",
                                                             EDGESEG_CACHE_DIR=str(tmp_path / "cache")))
    assert reference.returncode == 0, reference.stderr
    assert [_loaded_backend(done.stderr) for done in runs] == [_loaded_backend(reference.stderr)] * 2
    masks = [np.asarray(nib.load(tmp_path / name).dataobj) for name in ("out0/mask.nii.gz", "out1/mask.nii.gz", "ref.nii.gz")]
    assert (masks[0] > 0).any()
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])


def test_a_cache_folder_this_user_cannot_write_is_not_measured_into(bundle_dir, tmp_path):
    """EDGESEG_CACHE_DIR names a folder that exists with its lock file but is another user's (a
    cache baked into an image): the probe lock opens (read-only), so auto used to measure, then
    fail to record what it chose. Now it chooses by its fixed order, as with no cache at all."""
    cache = tmp_path / "out" / "cache"  # root's, inside the folder the confined user may write
    cache.mkdir(parents=True)
    (cache / "backend-probing.lock").write_text("")
    done = confined(edgeseg("predict", bundle_dir, SERIES, "--out", OUT / "mask.nii.gz"), tmp_path / "out",
                    env={"EDGESEG_CACHE_DIR": str(OUT / "cache")})
    assert done.returncode == 0, done.stderr
    assert "probe at batch 1" not in done.stderr and "chooses without measuring" in done.stderr, done.stderr
    assert sorted(path.name for path in cache.iterdir()) == ["backend-probing.lock"]
