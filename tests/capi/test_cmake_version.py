"""edgeseg-config-version.cmake (csrc/sdk/Makefile makes it from its .in file) answers
find_package's version requests as the file CMake's own write_basic_package_version_file(...
COMPATIBILITY SameMajorVersion) writes for the same version, request by request, in one
CMake run that generates that reference file beside it; and it judges the pointer size the
way CMake's does, including in a project with no language enabled (no CMAKE_SIZEOF_VOID_P)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.capi.test_soname import header_version

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = ["0", "0.0", "0.1", "0.1.0", "0.1.1", "0.2", "1", "1.0", "0.0...0.0.9", "0.0...0.1", "0.1...0.1.0",
            "0.1...0.2", "0.1...<1.0", "0.1...<1", "0.1...<1.1", "0.1...<2.0", "0.1...1.0", "0.1...2.0", "0.0...<0.1",
            "0.0...<0.1.1", "1.0...2.0", "0.2...0.3"]


def _make_version_file(prefix: Path, pointer_size: str | None) -> None:
    """The version file as make sdk writes it (the Makefile's own recipe), into prefix."""
    target = prefix / "lib" / "cmake" / "edgeseg" / "edgeseg-config-version.cmake"
    args = [f"POINTER_SIZE={pointer_size}"] if pointer_size is not None else []
    made = subprocess.run(["make", "-s", "-C", str(ROOT / "csrc" / "sdk"), f"OUT={prefix}", *args, str(target)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    (target.parent / "edgeseg-config.cmake").write_text("")


def _configure(project: Path, prefix: Path, body: str) -> subprocess.CompletedProcess:
    project.mkdir()
    (project / "CMakeLists.txt").write_text(f"cmake_minimum_required(VERSION 3.19)\nproject(p NONE)\n{body}")
    return subprocess.run(["cmake", "-S", str(project), "-B", str(project / "b"), f"-DCMAKE_PREFIX_PATH={prefix}"],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def cmake():
    if shutil.which("cmake") is None or shutil.which("make") is None:
        pytest.skip("cmake (or make) is not installed")
    assert header_version() == (0, 1, 0), "update REQUESTS with the version"


def test_version_requests_are_answered_as_cmakes_same_major_version_file(cmake, tmp_path):
    prefix = tmp_path / "prefix"
    _make_version_file(prefix, None)
    reference = prefix / "lib" / "cmake" / "reference"
    reference.mkdir()
    (reference / "reference-config.cmake").write_text("")
    body = (
        "include(CMakePackageConfigHelpers)\n"
        f'write_basic_package_version_file("{reference}/reference-config-version.cmake" VERSION 0.1.0 '
        "COMPATIBILITY SameMajorVersion)\n"
        f"foreach(request {' '.join(REQUESTS)})\n"
        "  foreach(package edgeseg reference)\n"
        "    unset(${package}_DIR CACHE)\n"
        "    find_package(${package} ${request} QUIET)\n"
        '    message(STATUS "answer ${request} ${package} ${${package}_FOUND}")\n'
        "  endforeach()\n"
        "endforeach()\n")
    result = _configure(tmp_path / "p", prefix, body)
    assert result.returncode == 0, result.stdout + result.stderr
    answers: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("-- answer "):
            _, _, request, package, found = line.split()
            answers.setdefault(request, {})[package] = found
    assert list(answers) == REQUESTS
    assert {r: a["edgeseg"] for r, a in answers.items()} == {r: a["reference"] for r, a in answers.items()}
    # and the rows docs/c-api.md names
    assert [answers[r]["edgeseg"] for r in ("0.1", "0.0", "0.1.0", "0.1...<1.0", "0.2", "1.0", "0.1...2.0", "0.1...<2.0")] \
        == ["1"] * 4 + ["0"] * 4


@pytest.mark.parametrize(("pointer_size", "prelude", "found"), [
    ("8", "", True),  # project(p NONE): no CMAKE_SIZEOF_VOID_P, no pointer-size check
    ("8", "set(CMAKE_SIZEOF_VOID_P 8)\n", True),
    ("8", "set(CMAKE_SIZEOF_VOID_P 4)\n", False),
    ("", "set(CMAKE_SIZEOF_VOID_P 4)\n", True),  # a build that wrote no pointer size
])
def test_the_pointer_size_check_runs_only_when_both_sides_know_theirs(cmake, tmp_path, pointer_size, prelude, found):
    prefix = tmp_path / "prefix"
    _make_version_file(prefix, pointer_size)
    result = _configure(tmp_path / "p", prefix, f"{prelude}find_package(edgeseg 0.1 REQUIRED)\n")
    if found:
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        assert result.returncode != 0 and "0.1.0 (64bit)" in result.stderr, result.stderr
