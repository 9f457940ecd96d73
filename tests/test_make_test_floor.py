"""``make test-floor``'s recipe, read from ``make -n`` and its lines run on their own.

The floor venv builds edgeseg with ``--no-build-isolation``, so the setuptools it builds with is
the one the recipe installs: a new venv's own (65 on Python 3.11) cannot read
``project.license`` and the install fails. A copy of the tracked files that failed must stop the
target, and the tests must never run anywhere but in that copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _recipe(**variables: str) -> list[str]:
    """The shell lines ``make test-floor`` would run, continuation lines joined."""
    args = [f"{name}={value}" for name, value in variables.items()]
    out = subprocess.run(["make", "-n", "-s", "test-floor", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if not line.lstrip().startswith("#")]


def _line(lines: list[str], marker: str) -> str:
    found = [line for line in lines if marker in line]
    assert len(found) == 1, f"{marker!r} in {len(found)} recipe lines: {lines}"
    return found[0]


def test_the_build_tools_are_upgraded_to_what_build_system_asks():
    lines = _recipe()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    floor = next(re.fullmatch(r"setuptools>=([0-9.]+)", r) for r in requires if r.startswith("setuptools")).group(1)
    tools = _line(lines, " wheel ")
    assert re.search(r"\binstall (.* )?(-U|--upgrade)\b", tools), tools
    assert f'"setuptools>={floor}"' in tools, tools
    build = _line(lines, "--no-build-isolation")
    assert lines.index(tools) < lines.index(build)
    # and the constraints file does not hold setuptools back below it
    assert "setuptools" not in (ROOT / "constraints" / "floor.txt").read_text()


def test_a_failed_copy_of_the_tracked_files_stops_the_target(tmp_path):
    """Outside a git work tree ``git ls-files`` fails; the copy must fail with it, not hand an
    empty tree on to the install."""
    dest = tmp_path / "src"
    dest.mkdir()
    copy = _line(_recipe(FLOOR_SRC=str(dest)), "tar --null")
    env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tmp_path.parent))
    env.pop("GIT_DIR", None)
    done = subprocess.run(["/bin/sh", "-c", copy], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode != 0, done.stderr
    assert list(dest.iterdir()) == []


def test_the_tests_never_run_outside_the_copy(tmp_path):
    """With the copy missing, the test loop fails at ``cd`` and runs no test in the directory it
    was started from."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    ran = tmp_path / "ran"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\npwd >> "{ran}"\n')
    python.chmod(0o755)
    loop = _line(_recipe(FLOOR_SRC=str(tmp_path / "missing"), FLOOR_VENV=str(venv),
                         FLOOR_TESTS="tests/a tests/b"), "rc=0")
    done = subprocess.run(["/bin/sh", "-c", loop], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0
    assert not ran.exists(), ran.read_text()


def test_the_c_api_tests_run_on_the_c_api_openvino_floor_and_only_they(tmp_path):
    """The 2024.0 wheel of the Python floor ships no C library, so tests/capi get OpenVINO's C API
    floor (docs/c-api.md, the version setup.py names) installed apart and first on PYTHONPATH; the
    other folders keep the venv's own OpenVINO. A stand-in python records what each run saw."""
    stated = re.search(r"\*\*([0-9]+\.[0-9]+) or later\*\*", (ROOT / "docs" / "c-api.md").read_text()).group(1)
    assert f"OpenVINO {stated} or later" in (ROOT / "setup.py").read_text()
    overlay = tmp_path / "ov"
    lines = _recipe(FLOOR_CAPI_OV=str(overlay), FLOOR_TESTS="tests/runtime tests/capi")
    install = _line(lines, "--target")
    pinned = re.search(r'"openvino==([0-9.]+)"', install).group(1)
    assert _release_of(pinned) == _release_of(stated) and f"--target {overlay}" in install, install
    assert lines.index(_line(lines, "--no-build-isolation")) < lines.index(install) < lines.index(_line(lines, "rc=0"))
    assert not [line for line in _recipe(FLOOR_TESTS="tests/runtime") if "--target" in line]

    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    (venv / "bin").mkdir(parents=True)
    seen = tmp_path / "seen"
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "${{PYTHONPATH:-none}} $4" >> "{seen}"\n')
    python.chmod(0o755)
    loop = _line(_recipe(FLOOR_SRC=str(src), FLOOR_VENV=str(venv), FLOOR_CAPI_OV=str(overlay),
                         FLOOR_TESTS="tests/runtime tests/capi tests/export"), "rc=0")
    done = subprocess.run(["/bin/sh", "-c", loop], cwd=tmp_path, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH="/elsewhere"))
    assert done.returncode == 0, done.stderr
    assert seen.read_text().splitlines() == ["none tests/runtime", f"{overlay} tests/capi", "none tests/export"]


def _release_of(version: str) -> tuple[int, ...]:
    """major.minor of a version: 2026.0.0 and 2026.0 are the same release line."""
    return tuple(int(part) for part in version.split(".")[:2])


def test_the_triton_server_is_installed_without_touching_the_floors():
    """tests/serve's Triton tests (the tritonclient floor against a real tritonserver) skip
    without the nvidia-pytriton wheel; the recipe installs it as ``make install`` does, with
    ``--no-deps`` (its metadata would move numpy), after the floors are in place."""
    lines = _recipe()
    server = _line(lines, "nvidia-pytriton")
    assert re.search(r"/pip install --no-deps \"nvidia-pytriton>=[0-9.]+\"", server), server
    assert lines.index(_line(lines, "--no-build-isolation")) < lines.index(server) < lines.index(_line(lines, "rc=0"))
