"""atomic_set: outputs in several folders land as one set; stops_held: Ctrl-C and SIGTERM wait
for the renames. (The CLI commands that use them: tests/cli/test_interrupted_writes.py.)"""

from __future__ import annotations

import hashlib
import os
import signal
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
    from tests.interrupting import ctrl_c_as_at_a_terminal

    done = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=120,
                          preexec_fn=ctrl_c_as_at_a_terminal)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


BOTH = """
import os, signal
from edgeseg.stopping import sigterm_stops, stops_held

def stopped_by_both():
    try:
        with stops_held():
            os.kill(os.getpid(), signal.SIGINT)  # the Ctrl-C first
            os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt as exc:  # Terminated is one
        return type(exc).__name__
    return None

with sigterm_stops():
    assert stopped_by_both() == "Terminated"
got = []
signal.signal(signal.SIGTERM, lambda number, frame: got.append(number))  # a handler that returns
assert stopped_by_both() == "KeyboardInterrupt" and got == [signal.SIGTERM]
print("ok")
"""


def test_with_both_held_sigterm_is_delivered_first():
    """A Ctrl-C and then a SIGTERM during the block: the SIGTERM is acted on (Terminated), not the
    Ctrl-C that came first; a SIGTERM handler that returns is followed by the Ctrl-C. (The signal
    that came first was delivered, and its KeyboardInterrupt dropped the other.)"""
    from tests.interrupting import ctrl_c_as_at_a_terminal

    done = subprocess.run([sys.executable, "-c", BOTH], capture_output=True, text=True, timeout=120,
                          preexec_fn=ctrl_c_as_at_a_terminal)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_an_empty_set_is_a_plain_block(tmp_path):
    """bench without --json and --png: nothing staged, and an error in the block is that error."""
    with pytest.raises(OSError, match="disk full") as failed:
        with atomic_set([]) as staged:
            assert staged == {}
            raise OSError(28, "disk full")
    assert failed.value.filename is None


STAGER = """
import os, signal, sys, time
from pathlib import Path
from edgeseg import atomic_set as atomic_set_module

root, when, fallback = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
if fallback:
    atomic_set_module.exchange_paths = lambda a, b: False
if when == "landing":  # killed outright after the second of three renames
    put_in_place, done = atomic_set_module._put_in_place, []
    def killed_after_two(new, target):
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(put_in_place(new, target))
        return done[-1]
    atomic_set_module._put_in_place = killed_after_two
with atomic_set_module.atomic_set([root / "a" / "x.png", root / "b" / "y.json"], folders=[root / "c" / "series"]) as staged:
    for path, tmp in staged.items():
        (tmp / "0000.png" if tmp.is_dir() else tmp).write_text("from " + str(os.getpid()))
    if when == "staging":
        print("staged", flush=True)
        time.sleep(600)
"""


def set_targets(root: Path) -> list[Path]:
    return [root / "a" / "x.png", root / "b" / "y.json", root / "c" / "series" / "0000.png"]


def hidden(root: Path) -> dict[str, str]:
    """The hidden files and folders beside the targets, files with their sha256."""
    return {name: digest for name, digest in tree(root).items() if any(part.startswith(".") for part in Path(name).parts)}


def stager(root: Path, when: str, fallback: bool = False, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", STAGER, str(root), when, "1" if fallback else "0"],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, **popen)


def write_set(root: Path, text: str) -> None:
    with atomic_set(set_targets(root)[:2], folders=[root / "c" / "series"]) as staged:
        for tmp in staged.values():
            (tmp / "0000.png" if tmp.is_dir() else tmp).write_text(text)


def test_what_a_writer_killed_while_staging_left_goes_at_the_next_write_and_a_live_writers_stays(tmp_path):
    write_set(tmp_path, "earlier")
    killed = stager(tmp_path, "staging", stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline() == "staged\n"
    killed.kill()
    killed.wait()
    killed.stdout.close()
    assert hidden(tmp_path)  # the staged set of the killed writer
    not_ours = {tmp_path / "a" / ".x.png.notes.png": "a user's", tmp_path / "b" / ".y.json.staging-1-notes": "a user's"}
    for path, text in not_ours.items():
        path.write_text(text)
    with stager(tmp_path, "staging", stdout=subprocess.PIPE, text=True) as live:
        try:
            assert live.stdout.readline() == "staged\n"
            before = hidden(tmp_path)
            live_files = {name: digest for name, digest in before.items() if str(live.pid) in name}
            assert len([name for name in live_files if "0000.png" not in name]) == 3, before
            write_set(tmp_path, "latest")
            assert hidden(tmp_path) == {**live_files, **{str(p.relative_to(tmp_path)): hashlib.sha256(t.encode()).hexdigest()
                                                          for p, t in not_ours.items()}}
        finally:
            live.kill()
    assert [p.read_text() for p in set_targets(tmp_path)] == ["latest"] * 3


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "link-and-move-aside"])
def test_what_a_writer_killed_between_renames_kept_aside_goes_at_the_next_write(tmp_path, fallback):
    write_set(tmp_path, "earlier")
    killed = stager(tmp_path, "landing", fallback)
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert hidden(tmp_path)  # the earlier files replaced, and the staged folder not yet landed
    write_set(tmp_path, "latest")
    assert hidden(tmp_path) == {}
    assert [p.read_text() for p in set_targets(tmp_path)] == ["latest"] * 3


RACER = """
import sys
from pathlib import Path
from edgeseg.atomic_set import atomic_set

root, me = Path(sys.argv[1]), sys.argv[2]
files = [root / f"d{i % 4}" / f"out{i}.json" for i in range(12)]
for line in sys.stdin:  # one set per line, in step with the other writer
    with atomic_set(files, folders=[root / "d0" / "series"]) as staged:
        for tmp in staged.values():
            (tmp / "0000.png" if tmp.is_dir() else tmp).write_text(me)
    print("done", flush=True)
"""


def test_two_processes_writing_one_set_at_once_leave_one_writers_whole_set(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    writers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), name], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for name in ("first", "second")]
    try:
        for round_ in range(150):
            for writer in writers:
                writer.stdin.write("go\n")
                writer.stdin.flush()
            assert [writer.stdout.readline() for writer in writers] == ["done\n"] * 2, round_
            found = {p.read_text() for p in tmp_path.rglob("*") if p.is_file()}
            assert len(found) == 1, (round_, sorted((str(p.relative_to(tmp_path)), p.read_text())
                                                    for p in tmp_path.rglob("*") if p.is_file()))
    finally:
        for writer in writers:
            writer.stdin.close()
            writer.wait(timeout=120)
    assert len(list(tmp_path.rglob("*.json"))) == 12
