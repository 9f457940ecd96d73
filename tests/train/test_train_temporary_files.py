"""``edgeseg train`` with DataLoader workers leaves nothing of theirs in TMPDIR: each worker made a
``pymp-*`` folder (multiprocessing's, for the descriptors of the tensors it sends) and was ended by
SIGTERM at interpreter exit, so its folder stayed behind after every run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def test_train_with_workers_leaves_no_worker_folder_in_tmpdir(tmp_path):
    # a short TMPDIR of its own: the workers' sockets live there, and a socket path over 107
    # bytes (pytest's tmp_path under xdist is longer than that allows) fails as "AF_UNIX path too long"
    tmp = Path(tempfile.mkdtemp(prefix="es-tmp-", dir="/tmp"))
    try:
        _train_and_check(tmp_path, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train_and_check(tmp_path, tmp):
    env = dict(os.environ, TMPDIR=str(tmp))
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "--data", "phantom:cases=3,size=32,slices=8,seed=0",
                           "--out", str(tmp_path / "run"), "--size", "32", "--base", "4", "--depth", "1", "--epochs", "1",
                           "--batch-size", "4", "--workers", "2", "--quiet"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "best.pt").is_file()
    # torch makes an empty torchinductor_USER folder when torch._dynamo is imported (docs/provenance.md)
    left = sorted(path.name for path in tmp.iterdir() if not path.name.startswith("torchinductor_"))
    assert left == []
