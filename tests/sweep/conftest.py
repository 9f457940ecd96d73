"""The tiny phantom sweep (tiny_sweep.toml) with its mobile_unet point finished, run once per test
session and copied into each test that starts from it: a point trains, exports and is measured in
fresh interpreters, which is most of what these tests cost, and several tests only read, redo or
extend that point."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shared_builds import build_once

TINY_SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()
MOBILE = "mobile_unet-b4-d2-s64"


def sweep_command(sweep_file: Path, out: Path) -> list[str]:
    """``edgeseg sweep SWEEP_FILE --out OUT --quiet`` in a child interpreter."""
    return [sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet"]


def run_sweep_here(sweep_file: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``edgeseg sweep SWEEP_FILE --out OUT --quiet EXTRA`` in this process (click's CliRunner,
    exceptions not caught), for a run that trains, exports and measures nothing: the reports over
    finished points, or a refusal. A fresh interpreter spends seconds importing torch for those;
    the exit status, stdout and stderr are the command's own."""
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    args = ["sweep", str(sweep_file), "--out", str(out), "--quiet", *map(str, extra)]
    result = GuardedCliRunner().invoke(cli, args, catch_exceptions=False)
    return subprocess.CompletedProcess(["edgeseg", *args], result.exit_code, result.stdout, result.stderr)


@pytest.fixture
def sweep_here():
    """``run_sweep_here``: a sweep run that trains nothing, in the test process."""
    return run_sweep_here


@pytest.fixture(scope="session")
def mobile_point_sweep(tmp_path_factory) -> Path:
    """A folder with ``sweep.toml`` (tiny_sweep.toml) and ``out/``, where ``edgeseg sweep sweep.toml
    --out out --point mobile_unet-b4-d2-s64`` has finished; read-only (tests copy it with
    ``copy_mobile_point_sweep``). Parallel test workers share one run: the first builds it, the
    others wait for it (``tests.shared_builds``)."""
    def build(folder: Path) -> None:
        (folder / "sweep.toml").write_text(TINY_SWEEP)
        proc = subprocess.run(sweep_command(folder / "sweep.toml", folder / "out") + ["--point", MOBILE],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        (folder / "stdout.txt").write_text(proc.stdout)

    return build_once(tmp_path_factory, "tiny-sweep-mobile-point", build)


@pytest.fixture
def copy_mobile_point_sweep(mobile_point_sweep, tmp_path):
    """``copy(out)``: a copy of the finished mobile_unet point's sweep folder at ``out`` (under
    tmp_path), file times kept (tests compare them before and after a redo)."""
    def copy(out: Path) -> Path:
        shutil.copytree(mobile_point_sweep / "out", out, symlinks=True)
        return out

    return copy
