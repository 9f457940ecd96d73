"""What a command leaves outside the outputs it was asked for: with HOME and TMPDIR fresh empty
folders and no cache variable set, ``predict``, ``serve`` (one upload) and ``listen`` (one series
by dcmtk's storescu) write only under ~/.cache/edgeseg, the cache docs/provenance.md declares.
ONNX Runtime's telemetry, on by default, left a device id under ~/.cache/Microsoft and a ``.ses``
session file in TMPDIR (and looked up Microsoft's collector) in each of them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.serve.dcmtk_path import dcmtk_tool
from tests.serve.http_util import wait_ready

SERIES = Path(__file__).parents[1] / "data" / "dcmqi_ct_liver" / "ct-3slice"
# variables that move or switch off what is checked here: the test sees edgeseg's defaults
UNSET = ("EDGESEG_CACHE_DIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "MPLCONFIGDIR",
         "ORT_DISABLE_TELEMETRY")


@pytest.fixture
def fresh(tmp_path):
    """(environment, home, tmpdir): HOME and TMPDIR empty folders of their own."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in UNSET}
    return dict(env, HOME=str(home), TMPDIR=str(tmp)), home, tmp


def undeclared(home: Path, tmp: Path) -> list[str]:
    """Everything under ``home`` and ``tmp`` but ~/.cache/edgeseg, its contents and the folders above it."""
    declared = home / ".cache" / "edgeseg"
    found = [path for path in home.rglob("*") if not (path == declared or declared in path.parents
                                                       or path in declared.parents)]
    return sorted(str(path) for path in [*found, *tmp.rglob("*")])


def edgeseg(*args) -> list[str]:
    return [sys.executable, "-m", "edgeseg.cli", *map(str, args)]


def stopped(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def test_predict_writes_only_its_output_and_the_cache(serve_bundle, fresh, tmp_path):
    env, home, tmp = fresh
    done = subprocess.run(edgeseg("predict", serve_bundle, SERIES, "--out", tmp_path / "mask.nii.gz",
                                  "--backend", "onnxruntime:fp32"),
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mask.nii.gz").is_file()
    assert any(path.is_file() for path in (home / ".cache" / "edgeseg").rglob("*"))  # the check can see the cache
    assert undeclared(home, tmp) == []


def test_serve_writes_nothing_outside_the_cache(serve_bundle, fresh, free_port, tmp_path):
    nib = pytest.importorskip("nibabel")
    import numpy as np

    env, home, tmp = fresh
    port = free_port()
    proc = subprocess.Popen(edgeseg("serve", serve_bundle, "--port", port, "--backend", "onnxruntime:fp32"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        wait_ready(proc, port)
        image = nib.Nifti1Image(np.zeros((32, 32, 2), np.int16), np.eye(4))
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/segment?format=npy", data=image.to_bytes(),
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            assert reply.status == 200 and reply.read()
        stopped(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert undeclared(home, tmp) == []


@pytest.mark.skipif(not dcmtk_tool("storescu"), reason="dcmtk's storescu is not installed: apt-get install dcmtk")
def test_listen_writes_nothing_outside_its_out_folder_and_the_cache(serve_bundle, fresh, free_port, wait_port,
                                                                    tmp_path):
    env, home, tmp = fresh
    port = free_port()
    out = tmp_path / "out"
    proc = subprocess.Popen(edgeseg("listen", serve_bundle, "--port", port, "--out", out, "--idle", "1",
                                    "--backend", "onnxruntime:fp32"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        wait_port(port, timeout=120)
        stored = subprocess.run(["storescu", "-aec", "EDGESEG", "127.0.0.1", str(port), *sorted(SERIES.glob("*.dcm"))],
                                capture_output=True, text=True, timeout=60)
        assert stored.returncode == 0, stored.stderr
        deadline = time.monotonic() + 120
        while not [seg for seg in out.glob("*.seg.dcm") if not seg.name.startswith(".")]:
            assert proc.poll() is None and time.monotonic() < deadline, "no DICOM SEG written"
            time.sleep(0.2)
        stopped(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert undeclared(home, tmp) == []
