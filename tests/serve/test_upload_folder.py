"""Where `edgeseg serve` writes /v1/segment uploads: the folder is checked before the server
starts (TMPDIR naming a folder it cannot use is not silently replaced by /tmp), and a folder
with no room left answers 507 and keeps nothing of the upload, on a real file system that fills
(a 1 MiB tmpfs mounted in a private mount namespace)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.serve.http_util import http_request, wait_ready

pytest.importorskip("fastapi")


def _serve(bundle, *options: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "serve", str(bundle), "--port", "1", *options],
                          capture_output=True, text=True, timeout=120, env=env)


def test_tmpdir_naming_no_folder_is_refused_before_the_model_loads(tmp_path, assert_one_line_error):
    """Python's tempfile falls back to /tmp, unannounced, where TMPDIR names no folder: an
    operator who pointed uploads at a scratch disk would find them filling /tmp instead."""
    missing = tmp_path / "scratch" / "uploads"
    proc = _serve(tmp_path / "no-bundle", env=dict(os.environ, TMPDIR=str(missing)))
    assert_one_line_error(proc, f"TMPDIR {missing} is not a folder (uploads to /v1/segment are written there)")


def test_a_missing_upload_dir_is_refused(tmp_path, assert_one_line_error):
    proc = _serve(tmp_path / "no-bundle", "--upload-dir", str(tmp_path / "missing"))
    assert_one_line_error(proc, f"--upload-dir {tmp_path / 'missing'} is not a folder")


def test_a_disk_budget_below_twice_the_body_limit_is_refused(tmp_path, assert_one_line_error):
    proc = _serve(tmp_path / "no-bundle", "--max-body-mb", "2", "--max-upload-disk-bytes", "4194303")
    assert_one_line_error(proc, "--max-upload-disk-bytes 4194303 is below twice --max-body-mb (4194304 bytes)")


def _private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@contextlib.contextmanager
def _serve_on_small_disk(bundle, folder, port):
    """`edgeseg serve` with TMPDIR a 1 MiB tmpfs mounted on ``folder`` in a mount namespace of
    its own (its files seen here under /proc/PID/root); yields the process once it is ready."""
    script = 'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"'
    proc = subprocess.Popen(["unshare", "-Urm", "sh", "-c", script, str(folder), sys.executable, "-m", "edgeseg.cli",
                             "serve", str(bundle), "--port", str(port), "--backend", "onnxruntime:fp32"],
                            env=dict(os.environ, TMPDIR=str(folder)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(proc, port)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _npy(hu: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, hu)
    return out.getvalue()


@pytest.mark.skipif(not _private_tmpfs_works(), reason="no user and mount namespaces to mount a small tmpfs in")
def test_an_upload_its_folder_has_no_room_for_is_507_and_leaves_nothing(serve_bundle, tmp_path, free_port):
    from edgeseg.runtime.segmenter import Segmenter

    folder = tmp_path / "small"
    folder.mkdir()
    port = free_port()
    small = np.full((2, 64, 64), -1000, np.int16)
    small[:, 16:48, 12:52] = 60
    with _serve_on_small_disk(serve_bundle, folder, port) as proc:
        seen = f"/proc/{proc.pid}/root{folder}"
        status, _, data = http_request(f"127.0.0.1:{port}", "POST", "/v1/segment?format=npy",
                                       _npy(np.zeros((64, 128, 128), np.int16)))  # 2 MiB
        assert status == 507, data
        assert json.loads(data)["error"] == "the server has no room left on disk to store the upload; retry later"
        assert [name for name in os.listdir(seen) if name.startswith("edgeseg-upload-")] == []
        # its body fits (704 KiB) and its mask (352 KiB) does not: the full disk is met writing the mask
        status, _, data = http_request(f"127.0.0.1:{port}", "POST", "/v1/segment?format=npy",
                                       _npy(np.zeros((22, 128, 128), np.int16)))
        assert status == 507, data
        assert [name for name in os.listdir(seen) if name.startswith("edgeseg-upload-")] == []
        status, _, data = http_request(f"127.0.0.1:{port}", "POST", "/v1/segment?format=npy", _npy(small))
        assert status == 200, data  # the room the refused upload took is free again
    with Segmenter.load(serve_bundle, backend="onnxruntime:fp32") as local:
        np.testing.assert_array_equal(np.load(io.BytesIO(data)), local.predict_volume(small))
    log = proc.stderr.read()
    assert re.search(rf"POST /v1/segment: cannot write the upload's file {re.escape(str(folder))}/edgeseg-upload-\w+/"
                     r"\S+: No space left on device", log), log
