"""``--force`` swaps edgeseg's models into a repository all or none: a failure or a kill part-way
leaves (after the next run's roll-back) exactly the old models, never a new network beside an old
pipeline, and no staging folder beside the repository."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeseg.cli.main import cli
from edgeseg.export import triton_swap
from edgeseg.export.triton import repo_model_names
from edgeseg.export.triton_swap import MARKER, recover_stale_swaps, staged_swap
from tests.guarded_cli import GuardedCliRunner

pytest.importorskip("tritonclient.grpc.model_config_pb2")

OURS = repo_model_names("edgeseg")


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def _ours(repo):
    return {name: _tree(repo / name) for name in OURS if (repo / name).exists()}


def _beside(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))


@pytest.fixture
def old_and_new(serve_bundle, tmp_path):
    """An old repository (with an earlier bundle's -trt model and a model of another name) and the
    new model folders of the same names, whose configs differ."""
    old, new = tmp_path / "old", tmp_path / "new"
    for folder, batch in ((old, "0"), (new, "2")):
        result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(folder), "--max-batch", batch])
        assert result.exit_code == 0, result.output
    (old / "edgeseg-trt" / "1").mkdir(parents=True)
    (old / "edgeseg-trt" / "config.pbtxt").write_text('name: "edgeseg-trt"\nplatform: "tensorrt_plan"\n')
    shutil.copytree(old / "edgeseg", old / "other")
    return old, new


def _swap(repo, new, on_step=None):
    with staged_swap(repo, OURS, on_step) as staging:
        for model in new.iterdir():
            shutil.copytree(model, staging / model.name)


def _steps(old, new, where):
    repo = where / "repo"
    shutil.copytree(old, repo)
    steps = []
    _swap(repo, new, lambda step, source, destination: steps.append((step, Path(source).name)))
    assert {name: _tree(repo / name) for name in OURS[:2]} == {name: _tree(new / name) for name in OURS[:2]}
    assert not (repo / "edgeseg-trt").exists() and _tree(repo / "other") == _tree(old / "other")
    return [s for s in steps if s[0] != "remove"]


def _break(step, source, destination):
    """Make the rename about to run fail for real: a file where the folder must go, or the staged
    model gone from where it is taken."""
    if step == "aside":
        Path(destination).write_text("in the way")
    else:
        os.rename(source, Path(source).parent.parent / "lost")


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_a_failed_rename_at_any_step_leaves_exactly_the_old_models(old_and_new, tmp_path, monkeypatch, fallback):
    old, new = old_and_new
    if fallback:
        monkeypatch.setattr(triton_swap, "exchange_paths", lambda a, b: False)
    steps = _steps(old, new, tmp_path / "probe")
    assert len(steps) == (7 if fallback else 5)  # the fallback's exchange step finds none
    for index, (step, name) in enumerate(steps):
        repo = tmp_path / str(index) / "repo"
        shutil.copytree(old, repo)
        count = iter(range(len(steps) + 1))

        def hook(s, source, destination):
            if s != "remove" and next(count) == index:
                _break(s, source, destination)

        with pytest.raises(OSError):
            _swap(repo, new, hook)
        assert _tree(repo) == _tree(old), (step, name)
        assert _beside(repo.parent) == [], (step, name)


KILLER = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    from edgeseg.export import triton_swap

    repo, new, index = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    if sys.argv[4] == "1":
        triton_swap.exchange_paths = lambda a, b: False
    calls = iter(range(100))
    def hook(step, source, destination):
        if next(calls) == index:
            os.kill(os.getpid(), signal.SIGKILL)
    with triton_swap.staged_swap(repo, ("edgeseg", "edgeseg-pipeline", "edgeseg-trt"), hook) as staging:
        for model in new.iterdir():
            shutil.copytree(model, staging / model.name)
""")


@pytest.mark.parametrize("fallback", [False, True], ids=["exchange", "two-renames"])
def test_a_run_killed_at_any_step_is_rolled_back_by_the_next_run(old_and_new, serve_bundle, tmp_path, fallback):
    old, new = old_and_new
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    steps = 7 if fallback else 5  # as test_a_failed_rename_at_any_step_..., then the staging folder's removal
    for index in range(steps + 1):
        repo = tmp_path / str(index) / "repo"
        shutil.copytree(old, repo)
        proc = subprocess.run([sys.executable, "-c", KILLER, str(repo), str(new), str(index), "1" if fallback else "0"],
                              env=env, capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert len(_beside(repo.parent)) == 1, index  # the killed run's staging folder
        # the next run into this repository, for models of another name, puts the old ones back
        result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--force", "--name", "liver"])
        assert result.exit_code == 0, result.output
        expected = old if index < steps else new  # the kill at the removal comes after the swap completed
        assert _ours(repo) == _ours(expected), index
        assert _tree(repo / "other") == _tree(old / "other")
        assert _beside(repo.parent) == [], index


def _dead_pid():
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        proc.wait()
    return proc.pid


MARKER_KILLER = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from edgeseg.export.triton_swap import staged_swap

    # the first byte written to any file kills this process (SIGXFSZ, which Python ignores unless
    # told otherwise): the marker's, the first one written
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    with staged_swap(Path(sys.argv[1]), ()) as new:
        (new / "edgeseg").mkdir()
""")


def test_a_run_killed_while_writing_its_marker_leaves_no_staging_folder(tmp_path):
    """The marker was written in place: a run killed while writing it left an empty marker, which
    names no repository, so its staging folder was never removed."""
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-B", "-c", MARKER_KILLER, str(repo)], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr
    [staging] = _beside(tmp_path)  # killed after the staging folder was made, before it was marked
    assert not (tmp_path / staging / MARKER).is_file() or (tmp_path / staging / MARKER).read_bytes() == b""
    recover_stale_swaps(repo)
    assert _beside(tmp_path) == [] and _tree(repo) == [("m", None), ("m/1", None)]


def test_only_this_repository_s_staging_folders_of_dead_runs_are_removed(tmp_path):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    dead = _dead_pid()
    stale = tmp_path / f".repo.triton-swap-{dead}-0a1b"
    (stale / "new" / "edgeseg").mkdir(parents=True)
    (stale / MARKER).write_text(f"{repo.resolve()}\n")
    empty = tmp_path / f".repo.triton-swap-{dead}-0a1c"
    empty.mkdir()
    unnamed = tmp_path / f".repo.triton-swap-{dead}-0a20"  # an earlier edgeseg killed writing its marker
    unnamed.mkdir()
    (unnamed / MARKER).write_text("")
    unmarked = tmp_path / f".repo.triton-swap-{dead}-0a1d"
    (unmarked / "scan").mkdir(parents=True)
    other = tmp_path / f".repo.triton-swap-{dead}-0a1e"
    (other / "new").mkdir(parents=True)
    (other / MARKER).write_text(f"{tmp_path / 'elsewhere' / 'repo'}\n")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            busy = tmp_path / f".repo.triton-swap-{live.pid}-0a1f"
            (busy / "new").mkdir(parents=True)
            (busy / MARKER).write_text(f"{repo.resolve()}\n")
            recover_stale_swaps(repo)
        finally:
            live.kill()
    assert _beside(tmp_path) == sorted(p.name for p in (unmarked, other, busy))
    assert (unmarked / "scan").is_dir() and (repo / "m" / "1").is_dir()



def test_a_repository_whose_path_is_not_utf8_is_swapped_and_recovered(tmp_path):
    """A folder name is bytes on Linux (a share of Latin-1 names): the marker was written as UTF-8
    text, so a swap into such a repository failed with a traceback (UnicodeEncodeError), and a
    dead run's marker that is not UTF-8 stopped every later run (UnicodeDecodeError)."""
    try:
        repo = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9po"))
        (repo / "m" / "1").mkdir(parents=True)
    except (OSError, UnicodeError):
        pytest.skip("this filesystem takes only UTF-8 names")
    dead = _dead_pid()
    garbled = Path(os.fsdecode(os.fsencode(tmp_path) + f"/.{repo.name}.triton-swap-{dead}-0a1b".encode(errors="surrogateescape")))
    garbled.mkdir()
    (garbled / MARKER).write_bytes(b"/somewhere/r\xc3")  # not UTF-8: not this repository's, left alone
    stale = garbled.with_name(garbled.name[:-1] + "c")
    (stale / "new" / "edgeseg").mkdir(parents=True)
    (stale / MARKER).write_bytes(os.fsencode(repo.resolve()) + b"\n")  # this one's, as a dead run left it
    with staged_swap(repo, ("m",)) as staging:
        (staging / "m" / "2").mkdir(parents=True)
    assert _tree(repo) == [("m", None), ("m/2", None)]
    assert _beside(tmp_path) == [garbled.name]


CLI_KILLER = textwrap.dedent("""
    import os, signal, sys
    from edgeseg import atomic
    from edgeseg.cli.main import cli
    from edgeseg.export import triton_swap

    repo, index = sys.argv[1], int(sys.argv[2])
    atomic.exchange_paths = triton_swap.exchange_paths = lambda a, b: False
    rename, calls = os.rename, iter(range(100))
    def killing_rename(source, destination, *args, **kwargs):
        if repo in (os.path.dirname(os.fspath(source)), os.path.dirname(os.fspath(destination))) and next(calls) == index:
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(source, destination, *args, **kwargs)
    os.rename = killing_rename
    cli(["triton", sys.argv[3], repo, "--force", "--max-batch", "2"])
""")


def test_the_cli_killed_between_any_two_renames_never_leaves_a_mismatched_pair(old_and_new, serve_bundle, tmp_path):
    old, new = old_and_new
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    for index in range(8):
        repo = tmp_path / str(index) / "repo"
        shutil.copytree(old, repo)
        proc = subprocess.run([sys.executable, "-c", CLI_KILLER, str(repo), str(index), str(serve_bundle)],
                              env=env, capture_output=True)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
        result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--force", "--name", "liver"])
        assert result.exit_code == 0, result.output
        assert _ours(repo) in (_ours(old), _ours(new)), index
        assert _beside(repo.parent) == [], index
