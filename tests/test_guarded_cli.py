"""The in-process CLI runner every CLI test uses (tests/guarded_cli.py): it sees what native code
writes to file descriptor 2, fails a hung run with the command's name, and leaves the global
random states as it found them; and no test goes around it."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest

from tests.guarded_cli import GuardedCliRunner

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.argument("text")
def native_writer(text):
    """Writes TEXT to descriptor 2 below Python, as a C++ library's logger does, then fails the
    way edgeseg's CLI does: one line and exit 2."""
    os.write(2, text.encode() + b"\n")
    click.echo("edgeseg: error: refused", err=True)
    sys.exit(2)


def test_what_native_code_writes_to_fd2_is_in_the_result():
    before = os.fstat(2)
    result = GuardedCliRunner().invoke(native_writer, ["[W] native warning from a C++ library"])
    assert result.exit_code == 2
    for text in (result.stderr, result.output):
        lines = text.strip().splitlines()
        assert lines == ["edgeseg: error: refused", "[W] native warning from a C++ library"], text
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # descriptor 2 is put back


@click.command()
@click.argument("name")
def swallows_the_guard(name):
    """Hangs inside a catch-all, as a plugin loader that catches every BaseException of an import."""
    import time

    try:
        time.sleep(300)
    except BaseException:  # noqa: BLE001 - the catch-all under test
        click.echo("the import failed; going on without it", err=True)


def test_a_hang_whose_guard_exception_the_command_swallows_still_fails():
    from tests.guarded_cli import CommandHung

    with pytest.raises(CommandHung, match="swallows-the-guard: still running after 1 s"):
        GuardedCliRunner(hang_limit_s=1).invoke(swallows_the_guard, ["swallows-the-guard"])

_HUNG_TEST = """
import signal
import time

import click

from tests.guarded_cli import GuardedCliRunner


@click.command()
@click.option("--deaf", is_flag=True)
def stalls(deaf):
    if deaf:  # a main thread the guard's signal cannot reach, as one blocked in native code
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
    print("starting", flush=True)
    time.sleep(300)


def test_stalls_{name}():
    result = GuardedCliRunner(hang_limit_s=2, margin_s=10).invoke(stalls, {args!r})
    assert result.exit_code != 0  # a hung command must not be read as a refusal


def test_after():  # runs after a hung run: the guard left no timer and no handler of its own
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
"""


# as tests/conftest.py does
_CONFTEST = """
from tests.guarded_cli import keep_test_process_stderr


def pytest_configure(config):
    keep_test_process_stderr()
"""


@pytest.mark.parametrize("deaf", [False, True], ids=["signal", "watchdog"])
def test_a_hung_command_fails_its_test_with_the_command_named(tmp_path, deaf):
    args = ["--deaf"] if deaf else []
    name = "deaf" if deaf else "hearing"
    (tmp_path / "test_hung.py").write_text(_HUNG_TEST.format(name=name, args=args))
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    # the 120 s limit ends this test only if the guard fails; the command alone sleeps 300 s
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_hung.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    command = f"edgeseg {' '.join(args)}".strip()
    if deaf:  # the process ends, naming the command and where each thread was
        assert done.returncode == 70, text
        assert f"{command}: still running after 12 s, its main thread deaf" in text, text
    else:  # the one test fails, the next one runs
        assert re.search(r"CommandHung: edgeseg: still running after 2 s", text), text
        assert "1 failed, 1 passed" in text, text
    assert "time.sleep(300)" in text or "in stalls" in text, text


_STOPPED_TEST = """
import pathlib
import time

import click

from tests.guarded_cli import GuardedCliRunner


@click.command()
def stalls():
    pathlib.Path("started").touch()
    time.sleep(300)


def test_stalls():
    GuardedCliRunner(hang_limit_s=1, margin_s=3).invoke(stalls, [])
"""


def test_a_test_process_stopped_past_both_deadlines_still_fails_its_test_by_the_signal(tmp_path):
    """A test process stopped or starved for longer than the limit and the margin together (a
    paused machine, an overloaded one) wakes with both deadlines gone: the hung command still
    fails its one test with CommandHung, and the process is not ended as deaf (with the margin
    counted in wall time, the watchdog woke at the same moment and ended the process first: the
    likeliest way a CI run lost its worker in the swallowed-guard test above)."""
    (tmp_path / "test_stopped.py").write_text(_STOPPED_TEST)
    (tmp_path / "conftest.py").write_text(_CONFTEST)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_stopped.py"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(1200):
            if (tmp_path / "started").exists() or run.poll() is not None:
                break
            time.sleep(0.05)
        assert (tmp_path / "started").exists(), "the command never started"
        os.kill(run.pid, signal.SIGSTOP)  # past the limit (1 s) and the last resort (1 + 3 s)
        time.sleep(6)
        os.kill(run.pid, signal.SIGCONT)
        text, _ = run.communicate(timeout=120)
    finally:
        run.kill()
        run.wait()
    assert run.returncode == 1, text
    assert "CommandHung: edgeseg: still running after 1 s" in text, text
    assert "deaf" not in text, text


@click.command()
def seeds_everything():
    """Seeds every global generator, then refuses (as a training refused after seeding does)."""
    import torch

    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    sys.exit(2)


def _draws() -> tuple:
    import torch

    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_global_random_states_are_kept_across_a_run(tmp_path):
    import torch

    from edgeseg.cli.main import cli

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = _draws()
    for command, args in ((seeds_everything, []),
                          # a real refusal that comes after training seeded torch: no validation case
                          (cli, ["train", "--data", "phantom:cases=1,size=32,slices=4", "--out", str(tmp_path / "run"),
                                 "--size", "32", "--base", "4", "--depth", "2", "--seed", "3"])):
        random.seed(7)
        np.random.seed(7)
        torch.manual_seed(7)
        result = GuardedCliRunner().invoke(command, args)
        assert result.exit_code == 2, result.output
        assert _draws() == expected, command.name


def test_no_test_runs_the_cli_through_clicks_own_runner():
    """Every in-process run goes through GuardedCliRunner (a plain CliRunner sees none of the
    above)."""
    plain = re.compile(r"from click\.testing import[^\n]*\bCliRunner\b|click\.testing\.CliRunner")
    users = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("*.py")
                   if path.name != "guarded_cli.py" and plain.search(path.read_text()))
    assert users == []
