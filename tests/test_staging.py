"""Staged files beside a target: a later writer tidies killed writers' leftovers, and never a
running writer's (one it cannot see by pid included), nor fails its own write over one it cannot
remove."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeseg.atomic import atomic_dir, atomic_write_text

REPO = Path(__file__).parents[1]
# Writes TARGET through atomic_path; with "hold", says where it staged and waits for a line on
# stdin before landing. Prints "landed" or the error.
WRITER = textwrap.dedent("""
    import os, sys
    from edgeseg.atomic import atomic_path
    target, hold = sys.argv[1], sys.argv[2] == "hold"
    try:
        with atomic_path(target) as tmp:
            tmp.write_text(f"written by {sys.argv[3]}")
            if hold:
                print("staged", tmp.name, flush=True)
                sys.stdin.readline()
        print("landed", flush=True)
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
""")
UNSHARE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]


def test_a_writer_in_another_pid_namespace_leaves_a_running_writers_staged_file_alone(tmp_path):
    # A container sharing the output folder sees none of this host's pids: the pid in a running
    # writer's staging name looks gone from there. The writer's lock on its staged file says otherwise.
    if shutil.which("unshare") is None or subprocess.run([*UNSHARE, "true"], capture_output=True).returncode:
        pytest.skip("cannot start a process in a pid namespace of its own here (unshare, user namespaces)")
    target = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", WRITER, str(target), "hold", "host"], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as host:
        staged = host.stdout.readline().split()[-1]
        other = subprocess.run([*UNSHARE, sys.executable, "-c", WRITER, str(target), "now", "container"], env=env,
                               capture_output=True, text=True)
        assert other.stdout.strip() == "landed", other.stderr
        assert (tmp_path / staged).is_file()  # still there for the running writer
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.read().strip() == "landed"
    assert target.read_text() == "written by host"  # it landed last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def _as_nobody(write: Callable[[], None]) -> str:
    """Run ``write`` in a forked child as the user nobody (without exec: the interpreter may sit
    where nobody cannot read); "landed", or "failed:" with the exception's type and message."""
    read, fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            write()
            os.write(fd, b"landed")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
            os.write(fd, f"failed: {type(exc).__name__} {exc}".encode())
        finally:
            os._exit(0)
    os.close(fd)
    with os.fdopen(read) as said:
        outcome = said.read()
    os.waitpid(child, 0)
    return outcome


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0,
                    reason="only root can leave a leftover another user then cannot remove")
def test_a_leftover_the_writer_cannot_remove_does_not_stop_its_write():
    # A shared folder with the sticky bit (as /tmp): a dead writer of another user left its staged
    # file; the next user's write of the same target cannot remove it, and still lands.
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o1777)
        leftover = shared / ".out.json.staging-999999999-0a1b2c3d.json"  # beyond any pid_max: gone
        leftover.write_text("root's, half written")
        assert _as_nobody(lambda: atomic_write_text(shared / "out.json", "nobody's")) == "landed"
        assert (shared / "out.json").read_text() == "nobody's"
        assert leftover.is_file()  # not this user's to remove
    finally:
        shutil.rmtree(shared)


# Writes the folder TARGET through atomic_dir (with "set", a bundle-like set of files into its
# staging folder through atomic_files and atomic_set, which lock that folder); with "hold", says
# where it staged and waits for a line on stdin before landing. Prints "landed" or the error.
FOLDER_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgeseg.atomic import atomic_dir, atomic_files
    from edgeseg.atomic_set import atomic_set
    target, hold, who = sys.argv[1], sys.argv[2] == "hold", sys.argv[3]
    try:
        with atomic_dir(target) as tmp:
            (tmp / "model.onnx").write_text(f"written by {who}")
            if sys.argv[4:] == ["set"]:
                with atomic_files(tmp, ["manifest.json", "parity.json"]) as staged:
                    for path in staged.values():
                        path.write_text(who)
                with atomic_set([tmp / "calibration.json"], folders=[tmp / "profiles"]) as staged:
                    staged[tmp / "calibration.json"].write_text(who)
                    (staged[tmp / "profiles"] / "cpu.toml").write_text(who)
            if hold:
                print("staged", Path(tmp).name, flush=True)
                sys.stdin.readline()
        print("landed", flush=True)
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
""")


def test_a_writer_in_another_pid_namespace_leaves_a_running_writers_staging_folder_alone(tmp_path):
    """A staging folder was judged by its pid alone: a folder export in a container sharing the
    output folder removed the staging folder of a host's export still writing it, and the host's
    export then failed. The host's lock on its staging folder now keeps it."""
    if shutil.which("unshare") is None or subprocess.run([*UNSHARE, "true"], capture_output=True).returncode:
        pytest.skip("cannot start a process in a pid namespace of its own here (unshare, user namespaces)")
    target = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", FOLDER_WRITER, str(target), "hold", "host", "set"], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as host:
        staged = host.stdout.readline().split()[-1]
        other = subprocess.run([*UNSHARE, sys.executable, "-c", FOLDER_WRITER, str(target), "now", "container"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert other.stdout.strip() == "landed", other.stderr
        assert (tmp_path / staged / "model.onnx").read_text() == "written by host"  # still there for the running writer
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.read().strip() == "landed"
    assert (target / "model.onnx").read_text() == "written by host"  # it landed last
    assert sorted(p.name for p in target.iterdir()) == ["calibration.json", "manifest.json", "model.onnx", "parity.json",
                                                        "profiles"]
    assert (target / "profiles" / "cpu.toml").read_text() == "host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_set_written_into_the_writers_own_staging_folder_does_not_wait_for_its_lock(tmp_path):
    """The staging folder's lock is the one a set of files takes to land in that folder: a writer
    holding it must not wait for itself (a child with a time limit, so a wait fails the test)."""
    target = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", FOLDER_WRITER, str(target), "now", "one", "set"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "landed", done.stderr
    assert (target / "manifest.json").read_text() == "one" and (target / "profiles" / "cpu.toml").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# Writes the folder TARGET through atomic_dir, stopping once, right after the step named by
# argv[2] ("mkdir" or "open") on its new staging folder, to say so and wait for a line on stdin:
# the instant before the folder's lock is taken, made long enough for another writer to tidy in it.
PAUSED_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from edgeseg.atomic import atomic_dir
    step, paused = sys.argv[2], []
    def pausing(real):
        def call(path, *args, **kwargs):
            result = real(path, *args, **kwargs)
            if ".staging-" in os.fspath(path) and not paused:
                paused.append(path)
                print("paused", Path(path).name, flush=True)
                sys.stdin.readline()
            return result
        return call
    setattr(os, step, pausing(getattr(os, step)))
    try:
        with atomic_dir(sys.argv[1]) as tmp:
            (tmp / "model.onnx").write_text("written by host")
        print("landed", flush=True)
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
""")


@pytest.mark.parametrize("step", ["mkdir", "open"])
def test_a_staging_folder_tidied_away_before_its_lock_is_taken_is_made_again(tmp_path, step):
    """A staging folder was made, then opened and locked: a writer in another pid namespace
    tidying in between took it for a dead writer's leftover and removed it, and the export
    writing it failed (FileNotFoundError). Its writer now finds it gone once locked, and makes
    another."""
    if shutil.which("unshare") is None or subprocess.run([*UNSHARE, "true"], capture_output=True).returncode:
        pytest.skip("cannot start a process in a pid namespace of its own here (unshare, user namespaces)")
    target = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", PAUSED_WRITER, str(target), step], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as host:
        staged = host.stdout.readline().split()[-1]
        other = subprocess.run([*UNSHARE, sys.executable, "-c", FOLDER_WRITER, str(target), "now", "container"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert other.stdout.strip() == "landed", other.stderr
        assert not (tmp_path / staged).exists()  # unlocked yet, its pid gone from there: tidied
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.read().strip() == "landed"
    assert (target / "model.onnx").read_text() == "written by host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0,
                    reason="only root can become another user, whom the umask then keeps from opening a folder")
def test_a_staging_folder_that_cannot_be_opened_is_not_left_behind():
    # A umask without the owner's read bit makes a folder its writer cannot open (to lock it):
    # the write fails, and its staging folder was left beside the target.
    def write() -> None:
        os.umask(0o477)
        with atomic_dir(shared / "bundle") as tmp:
            (tmp / "model.onnx").write_text("nobody's")

    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o1777)
        assert _as_nobody(write).startswith("failed: PermissionError")
        assert list(shared.iterdir()) == []
    finally:
        shutil.rmtree(shared)


# Writes TARGET through atomic_write_text as the user nobody, in a pid namespace of its own (a
# second container sharing the folder): what it needs is loaded first, as root, since the
# interpreter may sit where nobody cannot read. Prints "landed" or the error.
NOBODY_WRITER = textwrap.dedent("""
    import fcntl, os, sys
    from edgeseg.atomic import atomic_write_text
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    try:
        atomic_write_text(sys.argv[1], "written by nobody")
        print("landed", flush=True)
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a writer of another user in a pid namespace")
def test_another_users_running_writers_staged_file_is_left_alone_in_a_folder_without_the_sticky_bit():
    """A staged file another user's writer holds (0600: not to be opened, so not to be locked, by
    this user) counted as free: a writer of another uid in another pid namespace removed it, the
    folder having no sticky bit, and the running writer then failed its rename."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                                                         capture_output=True).returncode:
        pytest.skip("cannot start a process in a pid namespace of its own here (unshare)")
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o777)  # writable by all, no sticky bit: any user may remove any name
        target, env = shared / "out.json", {**os.environ, "PYTHONPATH": str(REPO)}
        with subprocess.Popen([sys.executable, "-c", WRITER, str(target), "hold", "host"], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) as host:
            staged = shared / host.stdout.readline().split()[-1]
            other = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NOBODY_WRITER,
                                    str(target)], env=env, capture_output=True, text=True, timeout=120)
            assert other.stdout.strip() == "landed", other.stderr
            assert staged.is_file()  # still there for the running writer
            host.stdin.write("\n")
            host.stdin.flush()
            assert host.stdout.read().strip() == "landed"
        assert target.read_text() == "written by host"
        assert sorted(p.name for p in shared.iterdir()) == ["out.json"]
    finally:
        shutil.rmtree(shared)


# Writes TARGET through atomic_dir or atomic_path (argv[2]: "folder" or "file"). With "remade"
# (argv[3]), it stops once right after opening its new staging folder or file, before locking it,
# says its name and waits for a line on stdin; with "vanishing", every staging name it makes is
# removed at once. Prints "landed" or the error.
REMADE_WRITER = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from edgeseg.atomic import atomic_dir, atomic_path
    target, kind, how = sys.argv[1:4]
    real_open, real_mkdir, paused = os.open, os.mkdir, []
    def opening(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if how == "remade" and ".staging-" in os.fspath(path) and not paused:
            paused.append(path)
            print("paused", Path(path).name, flush=True)
            sys.stdin.readline()
        return fd
    def vanishing(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if how == "vanishing" and ".staging-" in os.fspath(path):
            os.rmdir(path)
    os.open, os.mkdir = opening, vanishing
    try:
        with (atomic_dir(target) if kind == "folder" else atomic_path(target)) as tmp:
            (tmp / "model.onnx" if kind == "folder" else tmp).write_text("written by host")
        print("landed", flush=True)
    except Exception as exc:
        print("failed:", type(exc).__name__, exc, flush=True)
""")


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_staging_name_removed_and_made_again_before_its_lock_is_not_taken_for_the_writers_own(tmp_path, kind):
    """Once its lock was held, a writer looked only for its staging name: a folder or file removed
    and made again under that name by someone else (not the one it had locked) was taken for its
    own, written into and landed on the target. The name must still be the file it locked."""
    target = tmp_path / ("bundle" if kind == "folder" else "out.json")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with subprocess.Popen([sys.executable, "-c", REMADE_WRITER, str(target), kind, "remade"], env=env, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as host:
        staged = tmp_path / host.stdout.readline().split()[-1]
        if kind == "folder":
            staged.rmdir()
            staged.mkdir()
            (staged / "other.txt").write_text("someone else's")
        else:
            staged.unlink()
            staged.write_text("someone else's")
        host.stdin.write("\n")
        host.stdin.flush()
        assert host.stdout.read().strip() == "landed"
    if kind == "folder":
        assert sorted(p.name for p in target.iterdir()) == ["model.onnx"]
        assert (target / "model.onnx").read_text() == "written by host"
        assert (staged / "other.txt").read_text() == "someone else's"  # not this writer's: left alone
    else:
        assert target.read_text() == "written by host"
        assert staged.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, staged.name])


def test_a_writer_whose_staging_names_all_vanish_gives_up_in_one_line(tmp_path):
    """A writer whose staging folder vanished before its lock made another, without end: it now
    gives up after a bounded number, saying where (a child with a time limit, so an endless loop
    fails the test)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", REMADE_WRITER, str(tmp_path / "bundle"), "folder", "vanishing"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == (f"failed: DataError cannot stage a write in {tmp_path}: each of 100 staging names "
                                   "made there was removed before it could be locked"), done.stderr
    assert list(tmp_path.iterdir()) == []
