"""A write the OS refuses (a full disk, a file over the size limit) ends in one line naming what
could not be written, exit status 2, and no half-written output: the earlier output stays whole.

The failure is real: the command runs under RLIMIT_FSIZE (with SIGXFSZ ignored, a write past the
limit fails with EFBIG, as it fails with ENOSPC on a full disk), which needs no root and no
small filesystem, and works as root too.
"""

import os
import resource
import signal
import subprocess
import sys

import click
import pytest

from edgeseg.cli.main import EdgesegGroup
from tests.guarded_cli import GuardedCliRunner

PHANTOM = "phantom:cases=2,size=64,slices=8"


def edgeseg_limited(limit: int, *args, cwd=None):
    """Run edgeseg with files limited to ``limit`` bytes."""
    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env, preexec_fn=limit_files)


def files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(data=PHANTOM, out=str(out), size=64, base=4, depth=2, epochs=1, batch_size=8, amp="off"),
          progress=False)
    return out / "best.pt"


def test_data_synth_on_a_full_disk_leaves_no_dataset(tmp_path, assert_one_line_error):
    out = tmp_path / "phantom"
    proc = edgeseg_limited(2000, "data", "synth", "--out", out, "--cases", 2, "--size", 64, "--slices", 8, "--quiet")
    assert_one_line_error(proc, f"edgeseg: error: File too large: {out}")
    assert os.listdir(tmp_path) == []


def test_evaluate_on_a_full_disk_keeps_the_earlier_set_or_writes_none(checkpoint, tmp_path, assert_one_line_error):
    out = tmp_path / "eval"
    done = edgeseg_limited(10**9, "evaluate", checkpoint, "--data", PHANTOM, "--split", "all", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    before = files(out)
    assert sorted(before) == ["eval.json", "eval.txt", "worst_cases.png"]
    args = ("evaluate", checkpoint, "--data", PHANTOM, "--split", "all", "--worst", 1, "--quiet", "--out")
    # worst_cases.png is far larger than eval.json and eval.txt: the limit lets those through
    limit = max(len(before["eval.json"]), len(before["eval.txt"])) + 4096
    assert limit < len(before["worst_cases.png"])
    assert_one_line_error(edgeseg_limited(limit, *args, out), f"File too large: {out / 'worst_cases.png'}")
    assert files(out) == before
    assert_one_line_error(edgeseg_limited(limit, *args, tmp_path / "new" / "eval"), "File too large: ")
    assert sorted(os.listdir(tmp_path)) == ["eval"]


def test_compare_on_a_full_disk_keeps_the_earlier_set(checkpoint, tmp_path, assert_one_line_error):
    import shutil

    runs = [checkpoint.parent, tmp_path / "copy"]
    shutil.copytree(runs[0], runs[1])
    out = tmp_path / "compare"
    assert edgeseg_limited(10**9, "compare", *runs, "--out", out).returncode == 0
    before = files(out)
    proc = edgeseg_limited(len(before["compare.json"]) + 1024, "compare", *runs[::-1], "--out", out)
    assert_one_line_error(proc, f"File too large: {out / 'compare.png'}")
    assert files(out) == before


def test_an_os_error_is_one_line_but_a_programming_error_keeps_its_traceback():
    @click.group(cls=EdgesegGroup)
    def cli():
        """Two commands that fail: one as the OS does, one as a bug does."""

    @cli.command()
    def denied():
        raise PermissionError(13, "Permission denied", "/srv/out/eval.json")

    @cli.command()
    def bug():
        raise ValueError("a bug")

    result = GuardedCliRunner().invoke(cli, ["denied"])
    assert result.exit_code == 2 and result.stderr == "edgeseg: error: Permission denied: /srv/out/eval.json\n"
    result = GuardedCliRunner().invoke(cli, ["bug"])
    assert isinstance(result.exception, ValueError)


def test_train_whose_checkpoint_cannot_be_written_is_one_line(tmp_path, assert_one_line_error):
    """torch's own file writer raised a RuntimeError from C++ here (a traceback): the checkpoint is
    serialised in memory and written as any file is."""
    out = tmp_path / "run"
    proc = edgeseg_limited(400_000, "train", "--data", PHANTOM, "--size", 64, "--base", 16, "--depth", 3, "--epochs", 1,
                           "--amp", "off", "--workers", 0, "--quiet", "--out", out)
    # after training's own log lines (the failure comes mid-run): one error line, no traceback
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"edgeseg: error: File too large: {out / 'best.pt'}"
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_export_whose_torchscript_cannot_be_written_is_one_line(checkpoint, tmp_path, assert_one_line_error):
    """torch.jit.save aborted the whole process here (SIGABRT, a C++ stack trace)."""
    out = tmp_path / "bundle"
    proc = edgeseg_limited(20_000, "export", checkpoint, "--out", out)
    assert_one_line_error(proc, f"edgeseg: error: cannot write the bundle {out}: File too large")
    assert not out.exists()


def test_a_reader_that_went_away_ends_the_command_quietly():
    """`edgeseg models | true`: stdout's reader is gone; the command ends as shell tools do
    (status 128 + SIGPIPE, nothing on stderr), not with 'edgeseg: error: Broken pipe'."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "models"], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 128 + signal.SIGPIPE and proc.stderr == "", proc.stderr


def test_a_slice_store_that_cannot_be_written_is_one_line_naming_it(tmp_path, assert_one_line_error):
    """numpy reports a short write as "N requested and M written", with no errno and no file."""
    cache = tmp_path / "cache"
    proc = edgeseg_limited(100_000, "train", "--data", PHANTOM, "--out", tmp_path / "run", "--cache", cache,
                           "--size", 64, "--base", 4, "--depth", 2, "--epochs", 1, "--quiet")
    assert_one_line_error(proc, "written), the disk may be full: " + str(cache / "store-"))
    assert os.listdir(tmp_path) == []  # neither the run folder nor the cache folder it made
