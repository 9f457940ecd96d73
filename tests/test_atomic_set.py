"""atomic_set: outputs in several folders land as one set; stops_held: Ctrl-C and SIGTERM wait
for the renames. (The CLI commands that use them: tests/cli/test_interrupted_writes.py.)"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg import atomic_set as atomic_set_module
from edgeseg.atomic_set import atomic_set


def tree(folder: Path) -> dict[str, str]:
    """Every file and folder below ``folder`` (hidden ones too), files with their sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(folder.rglob("*"))}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "link-and-move-aside"])
def test_a_rename_failing_partway_puts_back_those_already_done(tmp_path, monkeypatch, fallback):
    """The fourth output cannot land (a file took its folder's place while the set was written):
    the three renamed before it, in other folders, are undone, and nothing staged is left."""
    if fallback:  # as where renameat2 or its exchange is not available
        monkeypatch.setattr(atomic_set_module, "exchange_paths", lambda a, b: False)
    old, fresh, series, blocked = (tmp_path / "a" / "x.json", tmp_path / "b" / "new.txt", tmp_path / "c" / "series",
                                   tmp_path / "d" / "pngs")
    write(old, "old x")
    write(series / "0000.png", "old slice")
    write(blocked / "0000.png", "old slice")
    before = tree(tmp_path)
    with pytest.raises(NotADirectoryError) as failed:
        with atomic_set([old, fresh], folders=[series, blocked]) as staged:
            staged[old].write_text("new x")
            staged[fresh].write_text("new")
            (staged[series] / "0000.png").write_text("new slice")
            (staged[blocked] / "0000.png").write_text("new slice")
            (blocked / "0000.png").unlink()
            blocked.rmdir()
            blocked.write_text("someone else's file")
    assert failed.value.filename == str(blocked)
    before["d/pngs"] = hashlib.sha256(b"someone else's file").hexdigest()
    del before["d/pngs/0000.png"]
    assert tree(tmp_path) == before


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "link-and-move-aside"])
def test_a_set_replaces_files_and_folders_and_keeps_nothing_else(tmp_path, monkeypatch, fallback):
    if fallback:
        monkeypatch.setattr(atomic_set_module, "exchange_paths", lambda a, b: False)
    old, series = tmp_path / "a" / "x.json", tmp_path / "c" / "series"
    write(old, "old x")
    write(series / "0000.png", "old slice")
    write(series / "0001.png", "old slice")
    fresh = tmp_path / "new" / "deeper" / "y.txt"
    with atomic_set([old, fresh], folders=[series]) as staged:
        staged[old].write_text("new x")
        staged[fresh].write_text("new y")
        (staged[series] / "0000.png").write_text("new slice")
        assert old.read_text() == "old x" and not fresh.exists()  # nothing lands before the block ends
    assert tree(tmp_path) == tree_of({"a/x.json": "new x", "new/deeper/y.txt": "new y", "c/series/0000.png": "new slice"})


def tree_of(files: dict[str, str]) -> dict[str, str]:
    folders = {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    return {**{f: "folder" for f in folders}, **{n: hashlib.sha256(t.encode()).hexdigest() for n, t in files.items()}}


def test_a_failed_set_leaves_no_folder_it_made(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        with atomic_set([tmp_path / "a" / "b" / "x.json", tmp_path / "c" / "y.png"], folders=[tmp_path / "d" / "s"]):
            raise OSError(28, "disk full")
    assert list(tmp_path.iterdir()) == []


HELD = """
import os, signal
from edgeseg.stopping import Terminated, sigterm_stops, stops_held

def stopped_by(signum):
    done = []
    try:
        with stops_held():
            os.kill(os.getpid(), signum)
            done.append("ran on")  # the block is not cut short
    except KeyboardInterrupt as exc:  # Terminated is one
        return done, type(exc).__name__
    return done, None

before = signal.getsignal(signal.SIGINT)
assert stopped_by(signal.SIGINT) == (["ran on"], "KeyboardInterrupt")
assert signal.getsignal(signal.SIGINT) == before
with sigterm_stops():
    assert stopped_by(signal.SIGTERM) == (["ran on"], "Terminated")
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's: an ignored Ctrl-C stays ignored
assert stopped_by(signal.SIGINT) == (["ran on"], None)
assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
print("ok")
"""


def test_stops_held_delivers_ctrl_c_and_sigterm_after_the_block_to_the_handler_before_it():
    """In a fresh interpreter: the signals go to this process, which must survive a SIGTERM."""
    done = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_empty_set_is_a_plain_block(tmp_path):
    """bench without --json and --png: nothing staged, and an error in the block is that error."""
    with pytest.raises(OSError, match="disk full") as failed:
        with atomic_set([]) as staged:
            assert staged == {}
            raise OSError(28, "disk full")
    assert failed.value.filename is None
