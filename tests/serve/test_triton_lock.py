"""Two ``edgeseg triton`` runs on one repository never overlap: the second waits, saying so in one
line, for the process that holds the repository, then writes it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeseg.cli.main import cli
from tests.guarded_cli import GuardedCliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2")

# Holds the lock the way another run does (flock on the folder itself) until told to go on; then
# for the repository's creation, puts one in place and holds it in turn.
HOLDER = textwrap.dedent("""
    import fcntl, os, shutil, sys
    folder, repo, source = sys.argv[1:4]
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()
    if source:
        shutil.copytree(source, repo)
        held = os.open(repo, os.O_RDONLY)
        fcntl.flock(held, fcntl.LOCK_EX)
        os.close(fd)
        print("created", flush=True)
        sys.stdin.readline()
""")


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _write(bundle, repo, *args):
    result = GuardedCliRunner().invoke(cli, ["triton", str(bundle), str(repo), *args])
    assert result.exit_code == 0, result.output


def _start(tmp_path, *argv):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen([sys.executable, *argv], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def _triton(tmp_path, bundle, repo, *args):
    return _start(tmp_path, "-m", "edgeseg", "triton", str(bundle), str(repo), *args)


def _beside(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


def test_a_second_run_waits_for_the_run_holding_the_repository(serve_bundle, tmp_path):
    repo, new = tmp_path / "repo", tmp_path / "new"
    _write(serve_bundle, repo, "--max-batch", "0")
    _write(serve_bundle, new, "--max-batch", "2")
    before = _tree(repo)
    with _start(tmp_path, "-c", HOLDER, str(repo), str(repo), "") as holder:
        assert holder.stdout.readline() == "held\n"
        with _triton(tmp_path, serve_bundle, repo, "--force", "--max-batch", "2") as run:
            note = run.stderr.readline()
            assert note == f"waiting for another edgeseg triton run on {repo} to finish\n", note + run.stderr.read()
            assert _tree(repo) == before and _beside(tmp_path) == []  # nothing written while it waits
            holder.stdin.write("go\n")
            holder.stdin.flush()
            out, err = run.communicate()
        assert run.returncode == 0, err
    assert _tree(repo) == _tree(new) and _beside(tmp_path) == []


def test_a_run_waiting_for_another_to_create_the_repository_then_waits_on_the_repository(serve_bundle, tmp_path):
    old, new, repo = tmp_path / "old", tmp_path / "new", tmp_path / "place" / "repo"
    _write(serve_bundle, old, "--max-batch", "0")
    _write(serve_bundle, new, "--max-batch", "2")
    repo.parent.mkdir()
    with _start(tmp_path, "-c", HOLDER, str(repo.parent), str(repo), str(old)) as holder:
        assert holder.stdout.readline() == "held\n"
        with _triton(tmp_path, serve_bundle, repo, "--force", "--max-batch", "2") as run:
            note = run.stderr.readline()
            assert note == f"waiting for another edgeseg triton run creating a repository in {repo.parent} to finish\n", \
                note + run.stderr.read()
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline() == "created\n"
            # the repository it waited for now exists: it waits for that repository's holder, writing nothing
            note = run.stderr.readline()
            assert note == f"waiting for another edgeseg triton run on {repo} to finish\n", note + run.stderr.read()
            assert _tree(repo) == _tree(old) and _beside(repo.parent) == []
            holder.stdin.write("go\n")
            holder.stdin.flush()
            out, err = run.communicate()
        assert run.returncode == 0, err
    assert _tree(repo) == _tree(new) and _beside(repo.parent) == []


def test_a_run_without_force_that_waited_for_another_creating_the_repository_is_refused(serve_bundle, tmp_path):
    old, repo = tmp_path / "old", tmp_path / "place" / "repo"
    _write(serve_bundle, old, "--max-batch", "0")
    repo.parent.mkdir()
    with _start(tmp_path, "-c", HOLDER, str(repo.parent), str(repo), str(old)) as holder:
        assert holder.stdout.readline() == "held\n"
        with _triton(tmp_path, serve_bundle, repo, "--max-batch", "2") as run:
            assert run.stderr.readline().startswith("waiting for another edgeseg triton run creating a repository")
            holder.stdin.write("go\n")
            holder.stdin.flush()
            assert holder.stdout.readline() == "created\n"
            assert run.stderr.readline() == f"waiting for another edgeseg triton run on {repo} to finish\n"
            holder.stdin.write("go\n")
            holder.stdin.flush()
            out, err = run.communicate()
    # after the notes, exactly one error line and no traceback
    assert run.returncode == 2 and err.startswith("edgeseg: error: ") and len(err.splitlines()) == 1, err
    assert f"REPO {repo} exists; pass --overwrite" in err
    assert _tree(repo) == _tree(old) and _beside(repo.parent) == []


def test_a_filesystem_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch):
    """NFS may refuse flock on a folder (ENOLCK); the run goes on, as before the lock, but the
    user is told that concurrent runs are not kept out rather than left to believe they are."""
    import errno
    import fcntl

    from edgeseg.export.triton_swap import repository_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    repo = tmp_path / "repo"
    repo.mkdir()
    said = []
    with repository_lock(repo, said.append):
        ran = True
    assert ran and len(said) == 1
    assert f"cannot lock {repo}" in said[0] and "No locks available" in said[0] and "not kept out" in said[0]
