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
from click.testing import CliRunner

from edgeseg.cli.main import EdgesegGroup

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
        pass

    @cli.command()
    def denied():
        raise PermissionError(13, "Permission denied", "/srv/out/eval.json")

    @cli.command()
    def bug():
        raise ValueError("a bug")

    result = CliRunner().invoke(cli, ["denied"])
    assert result.exit_code == 2 and result.stderr == "edgeseg: error: Permission denied: /srv/out/eval.json\n"
    result = CliRunner().invoke(cli, ["bug"])
    assert isinstance(result.exception, ValueError)
