"""Folder replacement: at every step of a --force swap the target holds a complete old or new folder.

Each step of ``replace_dir`` is interrupted twice: by an exception (the in-process path) and by
a real SIGKILL of a child process (nothing runs after it). Both the RENAME_EXCHANGE path and
the two-rename fallback are covered; the fallback's one gap (killed between its renames) is
closed by the next write to the same target, which puts the old folder back.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeseg import atomic
from edgeseg.atomic import atomic_dir, exchange_paths
from edgeseg.staging import clean_leftovers

OLD = {"manifest.json": "old manifest", "model.onnx": "old weights"}
NEW = {"manifest.json": "new manifest", "model.onnx": "new weights", "model.fp16.onnx": "new half"}
EXCHANGE_STEPS = ["exchange", "remove-old"]
FALLBACK_STEPS = ["exchange", "move-old-aside", "rename-new", "remove-old"]


def write_folder(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def contents(folder: Path) -> dict:
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_exchange_swaps_two_folders(tmp_path):
    write_folder(tmp_path / "a", OLD)
    write_folder(tmp_path / "b", NEW)
    if not exchange_paths(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this system")
    assert contents(tmp_path / "a") == NEW and contents(tmp_path / "b") == OLD


class Stop(Exception):
    """Raised by the step hook to interrupt the swap."""


def stop_at(step):
    def hook(name):
        if name == step:
            raise Stop(name)
    return hook


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_an_exception_at_any_step_leaves_a_complete_folder(tmp_path, monkeypatch, fallback):
    if fallback:
        monkeypatch.setattr(atomic, "exchange_paths", lambda a, b: False)
    for step in FALLBACK_STEPS if fallback else EXCHANGE_STEPS:
        target = tmp_path / step / "bundle"
        write_folder(target, OLD)
        with pytest.raises(Stop):
            with atomic_dir(target, on_step=stop_at(step)) as staging:
                write_folder(staging, NEW)
        assert contents(target) in (OLD, NEW), step
        # Only the last step comes after the new folder is in place.
        assert contents(target) == (NEW if step == "remove-old" else OLD), step
        assert leftovers(target) == [], step


KILLER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from edgeseg import atomic

    target, step, fallback = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    if fallback:
        atomic.exchange_paths = lambda a, b: False
    def hook(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)
    with atomic.atomic_dir(target, on_step=hook) as staging:
        for name, text in {new!r}.items():
            (staging / name).write_text(text)
""").replace("{new!r}", repr(NEW))


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_a_sigkill_at_any_step_leaves_a_complete_folder(tmp_path, fallback):
    for step in FALLBACK_STEPS if fallback else EXCHANGE_STEPS:
        target = tmp_path / step / "bundle"
        write_folder(target, OLD)
        proc = subprocess.run([sys.executable, "-c", KILLER, str(target), step, "1" if fallback else "0"],
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if fallback and step == "rename-new":
            # The fallback's documented gap: the old folder waits under its aside name ...
            assert not target.exists() and any(".previous-" in n for n in leftovers(target))
        else:
            assert contents(target) == (NEW if step == "remove-old" else OLD), step
        # ... and the next write to the target restores it and removes the dead staging folders.
        clean_leftovers(target)
        assert contents(target) in (OLD, NEW), step
        assert leftovers(target) == [], step


def test_staging_folders_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "bundle"
    write_folder(target, OLD)
    stale = tmp_path / f".bundle.staging-{dead_pid()}-0a1b2c3d"
    write_folder(stale, NEW)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live_writer:
        try:
            busy = tmp_path / f".bundle.staging-{live_writer.pid}-0a1b2c3d"
            write_folder(busy, NEW)
            other = tmp_path / f".other.staging-{dead_pid()}-0a1b2c3d"
            write_folder(other, NEW)
            with atomic_dir(target) as staging:
                write_folder(staging, NEW)
            assert not stale.exists()
            assert busy.is_dir() and other.is_dir()  # a running writer's, and another target's
            assert contents(target) == NEW
        finally:
            live_writer.kill()


FILE_WRITER = textwrap.dedent("""
    import os, signal, sys
    from edgeseg.atomic import atomic_path

    with atomic_path(sys.argv[1], suffix=".npy") as tmp:
        with open(tmp, "wb") as out:
            out.write(b"half")
            out.flush()
            if sys.argv[2] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            print(tmp, flush=True)
            sys.stdin.readline()
            out.write(b" and the rest")
""")


def test_a_file_writer_killed_mid_write_leaves_nothing_after_the_next_write(tmp_path):
    """Single-file writes stage under the writer's pid, as folders do: the next write to the file
    removes a SIGKILLed writer's half file and leaves a running writer's, and users' files of
    look-alike names, alone (they were mkstemp names, ``.mask.npy.<8 random characters>.npy``, kept forever)."""
    from edgeseg.atomic import atomic_write_bytes

    target = tmp_path / "mask.npy"
    target.write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    with subprocess.Popen([sys.executable, "-c", FILE_WRITER, str(target), "kill"], env=env) as killed:
        assert killed.wait(timeout=120) == -signal.SIGKILL
    (half,) = (tmp_path / name for name in leftovers(target))
    assert half.read_bytes() == b"half" and target.read_bytes() == b"old"
    look_alikes = [tmp_path / f".mask.npy.staging-{killed.pid}-0a1b2c3d.txt", tmp_path / ".mask.npy.staging-notes.npy",
                   tmp_path / f"mask.npy.staging-{killed.pid}-0a1b2c3d.npy",
                   tmp_path / f".other.npy.staging-{killed.pid}-0a1b2c3d.npy"]
    for path in look_alikes:
        path.write_text("the user's")
    with subprocess.Popen([sys.executable, "-c", FILE_WRITER, str(target), "wait"], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as live:
        busy = Path(live.stdout.readline().strip())
        assert busy.parent == tmp_path and busy.read_bytes() == b"half"
        atomic_write_bytes(target, b"new")
        assert target.read_bytes() == b"new"
        assert not half.exists() and busy.read_bytes() == b"half"
        live.communicate("go\n", timeout=120)
    assert live.returncode == 0 and target.read_bytes() == b"half and the rest"
    assert all(path.read_text() == "the user's" for path in look_alikes)
    assert leftovers(target) == sorted(p.name for p in look_alikes if p.name.startswith(".mask.npy."))


def test_a_new_target_is_one_rename(tmp_path):
    steps = []
    with atomic_dir(tmp_path / "new" / "bundle", on_step=steps.append) as staging:
        write_folder(staging, NEW)
    assert steps == ["rename"] and contents(tmp_path / "new" / "bundle") == NEW


def test_atomic_files_get_the_umask_mode_or_keep_the_mode_they_replace(tmp_path):
    """A temporary file is made 0600; what lands is readable as any new file is (the umask), or
    keeps the mode of the file it replaces."""
    import stat as st

    from edgeseg.atomic import atomic_write_text

    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert st.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_text(tmp_path / "group.json", "{}")
        assert st.S_IMODE((tmp_path / "group.json").stat().st_mode) == 0o640
        (tmp_path / "kept.json").write_text("old")
        (tmp_path / "kept.json").chmod(0o604)
        atomic_write_text(tmp_path / "kept.json", "new")
        assert st.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o604
        assert (tmp_path / "kept.json").read_text() == "new"
    finally:
        os.umask(previous)


def test_a_folder_lock_leaves_no_folder_behind_when_nothing_was_written(tmp_path):
    from edgeseg.atomic import folder_lock

    with pytest.raises(ValueError):
        with folder_lock(tmp_path / "a" / "run", ".lock", "busy"):
            raise ValueError("the work failed before writing")
    assert not (tmp_path / "a").exists()  # the folders it made, the lock file with them
    with folder_lock(tmp_path / "b" / "run", ".lock", "busy"):
        (tmp_path / "b" / "run" / "last.pt").write_bytes(b"x")
    assert sorted(p.name for p in (tmp_path / "b" / "run").iterdir()) == [".lock", "last.pt"]
    (tmp_path / "c").mkdir()
    with folder_lock(tmp_path / "c", ".lock", "busy"):
        assert (tmp_path / "c" / ".lock").is_file()
    assert (tmp_path / "c").is_dir()  # a folder it did not make stays


def test_a_process_refused_by_the_folder_lock_touches_nothing(tmp_path):
    """A second process that finds the folder in use fails with the busy error and removes nothing,
    even when it saw the folder absent (it was made meanwhile) and the first holds only its lock."""
    import subprocess
    import sys

    from edgeseg.atomic import folder_lock
    from edgeseg.errors import DataError

    target = tmp_path / "run"
    second = ("import sys; from edgeseg.atomic import folder_lock\n"
              "try:\n    with folder_lock(sys.argv[1], '.lock', 'busy', discard_on=Exception):\n        pass\n"
              "except Exception as exc:\n    print(exc)\n")
    with folder_lock(target, ".lock", "busy"):
        done = subprocess.run([sys.executable, "-c", second, str(target)], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == "busy" and (target / ".lock").is_file()
    with pytest.raises(DataError):  # the work fails: the folder this made goes with it, lock and all
        with folder_lock(tmp_path / "new", ".lock", "busy", discard_on=DataError, keep="last.pt"):
            (tmp_path / "new" / "slice-store").mkdir()
            raise DataError("the data cannot train")
    assert not (tmp_path / "new").exists()
    with pytest.raises(DataError):  # ... unless it holds what is worth keeping
        with folder_lock(tmp_path / "kept", ".lock", "busy", discard_on=DataError, keep="last.pt"):
            (tmp_path / "kept" / "last.pt").write_bytes(b"x")
            raise DataError("stopped later")
    assert (tmp_path / "kept" / "last.pt").is_file()


def test_a_file_set_is_renamed_into_place_together_under_the_folder_lock(tmp_path, monkeypatch):
    """atomic_files: nothing of the set is visible until the block ends; the renames run while
    the folder is locked (a concurrent writer's renames wait, so sets never mix); a dropped file
    goes in the same step."""
    import fcntl

    out = tmp_path / "out"
    write_folder(out, {"b.txt": "old b", "c.png": "old plot"})
    renamed, original = [], os.replace

    def replace(src, dst):
        fd = os.open(out, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        renamed.append(Path(dst).name)
        original(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with atomic.atomic_files(out, ["a.json", "b.txt"], drop=["c.png"]) as staged:
        for name, path in staged.items():
            path.write_text(f"new {name}")
        assert contents(out) == {"b.txt": "old b", "c.png": "old plot", **{p.name: f"new {n}" for n, p in staged.items()}}
    assert renamed == ["a.json", "b.txt"]
    assert contents(out) == {"a.json": "new a.json", "b.txt": "new b.txt"}


def test_a_failed_file_set_leaves_the_earlier_set_and_no_folder_it_made(tmp_path):
    out = tmp_path / "out"
    write_folder(out, {"a.json": "old a", "b.txt": "old b"})
    with pytest.raises(OSError, match="disk full"):
        with atomic.atomic_files(out, ["a.json", "b.txt"]) as staged:
            staged["a.json"].write_text("new a")
            raise OSError(28, "disk full")
    assert contents(out) == {"a.json": "old a", "b.txt": "old b"}
    fresh = tmp_path / "new" / "deeper"
    with pytest.raises(OSError, match="disk full"):
        with atomic.atomic_files(fresh, ["a.json"]):
            raise OSError(28, "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


FULL_DISK_DICOM = """
import resource, signal, sys
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from edgeseg.atomic import atomic_path

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
ds.Rows = ds.Columns = 64
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
ds.PhotometricInterpretation = "MONOCHROME2"
ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()  # 8 KiB: past the limit
try:
    with atomic_path(sys.argv[1], suffix=".dcm") as tmp:
        ds.save_as(tmp, enforce_file_format=True)
except OSError as exc:
    print(str(exc))
"""


def test_a_dicom_write_on_a_full_disk_reads_as_the_file_it_was_writing(tmp_path):
    """pydicom raises the OS error again as one of its own; taken back to the OS's, its text ended
    in " -> None" (`edgeseg listen` logged "... File too large: 'X.seg.dcm' -> None")."""
    pytest.importorskip("pydicom")
    target = tmp_path / "x.seg.dcm"
    proc = subprocess.run([sys.executable, "-c", FULL_DISK_DICOM, str(target)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[Errno 27] File too large: '{target}'\n"
    assert os.listdir(tmp_path) == []
