"""The DICOM node block of docs/serving.md (``edgeseg listen``, ``echoscu``, ``storescu``), run as
written in a temporary folder: ``runs/demo/bundle`` is the test bundle, ``tests/data`` the
repository's, and port 11112 a free one. The peer is dcmtk's, and, as a reader with the venv
active has it first on PATH, pynetdicom's apps of the same names, which the page says take these
lines too. The node must write the series' SEG to ``runs/demo/seg``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import reserved_port
from tests.serve.dcmtk_path import dcmtk_first, missing_dcmtk

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "serving.md"
PORT = "11112"


def listen_block() -> list[list[str]]:
    """The page's code block that starts with ``edgeseg listen runs/demo/bundle``, as argument lists."""
    blocks = re.findall(r"^```\n(edgeseg listen runs/demo/bundle.*?)^```$", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"docs/serving.md should hold one block starting the node on runs/demo/bundle, has {len(blocks)}"
    return [shlex.split(line) for line in blocks[0].splitlines() if line.strip()]


def stop(node: subprocess.Popen, timeout: float = 60) -> str:
    """Ctrl-C to the node, then up to ``timeout`` s for it to finish; killed and reaped past that.
    Its output (stdout and stderr), saying so where it had to be killed."""
    node.send_signal(signal.SIGINT)
    try:
        return node.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        node.kill()
        return node.communicate()[0] + f"\n[the node was killed: still running {timeout} s after SIGINT]"


def _peer_path(peer: str) -> str:
    """PATH as a reader with the venv active has it: its bin/ (pynetdicom's apps) first, and for
    the dcmtk case, dcmtk's tools before those (tests.serve.dcmtk_path)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return dcmtk_first(path) if peer == "dcmtk" else path


# why a peer's case cannot run here, or None: dcmtk's own tools, not pynetdicom's of the same names
MISSING = {"dcmtk": missing_dcmtk("echoscu", "storescu"),
           "pynetdicom": None if all(shutil.which(tool, path=str(Path(sys.executable).parent))
                                     for tool in ("echoscu", "storescu"))
           else "pynetdicom's echoscu and storescu are not in the venv (the dicom extra)"}


@pytest.mark.parametrize("peer", [pytest.param(peer, marks=pytest.mark.skipif(bool(why), reason=str(why)))
                                  for peer, why in MISSING.items()])
def test_the_listen_block_segments_the_series(exported_bundle, tmp_path, peer):
    path = _peer_path(peer)
    found = shutil.which("storescu", path=path)
    assert (Path(found).read_bytes()[:2] == b"#!") == (peer == "pynetdicom"), found
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "bundle").symlink_to(exported_bundle, target_is_directory=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "data").symlink_to(ROOT / "tests" / "data", target_is_directory=True)
    port = str(reserved_port())
    listen, *peers = [[port if arg == PORT else arg for arg in argv] for argv in listen_block()]
    assert listen[:2] == ["edgeseg", "listen"] and [argv[0] for argv in peers] == ["echoscu", "storescu"]
    env = dict(os.environ, PATH=path, OMP_NUM_THREADS="1", EDGESEG_CACHE_DIR=str(tmp_path / "cache"))
    node = subprocess.Popen(listen, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for argv in peers:
            deadline = time.monotonic() + 120
            while True:  # the node loads its model before it listens
                done = subprocess.run(["bash", "-c", " ".join(map(shlex.quote, argv[:-1])) + " " + argv[-1]],
                                      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
                if done.returncode == 0 or argv[0] != "echoscu" or time.monotonic() > deadline or node.poll() is not None:
                    break
                time.sleep(0.5)
            assert done.returncode == 0, (argv, done.stdout + done.stderr)
        seg = tmp_path / "runs" / "demo" / "seg"
        deadline = time.monotonic() + 120
        while not list(seg.glob("*.seg.dcm")) and time.monotonic() < deadline and node.poll() is None:
            time.sleep(0.5)
        assert len(list(seg.glob("*.seg.dcm"))) == 1
    except BaseException as failed:  # the node's own account of what went wrong goes with it
        failed.add_note(f"the node's output:\n{stop(node)}")
        raise
    out = stop(node)
    assert node.returncode == 0, out
    assert "3 slices segmented" in out, out


def test_a_node_that_outlives_its_ctrl_c_is_killed_reaped_and_heard():
    """stop() on a process that ignores SIGINT: killed once the wait is over, reaped, and what it
    wrote is returned, not lost to a TimeoutExpired that leaves it running."""
    code = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "print('listening', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline() == "listening\n"  # SIGINT is ignored from here on
    out = stop(proc, timeout=1)
    assert proc.returncode == -signal.SIGKILL and "[the node was killed: still running 1 s after SIGINT]" in out
