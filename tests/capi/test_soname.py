"""libedgeseg as a distribution packages it: a versioned file with its SONAME link and link-time
name, the SONAME and symbol versions a program records, the version macros of edgeseg.h equal to
es_version() and to the package's version, and CMake's version requests (SameMajorVersion).

The version is read here from edgeseg.h's text on its own (not through the Makefile) and checked
against the installed package's metadata, which setup.py derives from the same lines."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

from tests.capi.conftest import compile_with_pkg_config

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = r"""
#include <stdio.h>
#include <edgeseg.h>

int main(void) {
    printf("%d %d %d %s %s\n", ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH, ES_VERSION_STRING, es_version());
    return 0;
}
"""


def header_version() -> tuple[int, int, int]:
    text = (ROOT / "csrc" / "edgeseg.h").read_text()
    found = [re.findall(rf"^\s*#\s*define\s+ES_VERSION_{part}\s+(\d+)\s*$", text, re.M) for part in ("MAJOR", "MINOR", "PATCH")]
    assert all(len(values) == 1 for values in found), f"one ES_VERSION_MAJOR/MINOR/PATCH each in edgeseg.h: {found}"
    return tuple(int(values[0]) for values in found)


def readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    return subprocess.run(["readelf", *args], capture_output=True, text=True, check=True).stdout


def dynamic_entries(path: Path, tag: str) -> list[str]:
    """The [values] of one dynamic-section tag (SONAME, NEEDED) of an ELF file."""
    return re.findall(rf"\({tag}\)\s+\S.*?\[(.+?)\]", readelf("-d", "-W", str(path)))


def test_the_version_has_one_value_everywhere():
    major, minor, patch = header_version()
    assert installed_version("edgeseg") == f"{major}.{minor}.{patch}"
    import edgeseg

    assert edgeseg.__version__ == f"{major}.{minor}.{patch}"


def test_the_library_is_a_versioned_file_with_its_soname_and_link_names(sdk):
    major, minor, patch = header_version()
    lib = sdk / "lib"
    real = lib / f"libedgeseg.so.{major}.{minor}.{patch}"
    assert real.is_file() and not real.is_symlink()
    assert (lib / f"libedgeseg.so.{major}").readlink() == Path(real.name)
    assert (lib / "libedgeseg.so").readlink() == Path(f"libedgeseg.so.{major}")
    assert dynamic_entries(real, "SONAME") == [f"libedgeseg.so.{major}"]
    # nothing half-written left beside them
    assert sorted(p.name for p in lib.glob("*libedgeseg*")) == sorted(["libedgeseg.so", f"libedgeseg.so.{major}", real.name])


def test_a_program_records_the_soname_and_the_version_node_and_its_macros_agree(sdk, tmp_path):
    major, minor, patch = header_version()
    source = tmp_path / "versions.c"
    source.write_text(PROGRAM)
    exe = compile_with_pkg_config(sdk, source, tmp_path / "versions")
    assert f"libedgeseg.so.{major}" in dynamic_entries(exe, "NEEDED")
    assert "libedgeseg.so" not in dynamic_entries(exe, "NEEDED")
    # the version-needs section: this program needs libedgeseg.so.MAJOR's node EDGESEG_MAJOR.MINOR
    needs = readelf("-V", "-W", str(exe))
    section = needs[needs.index(f"File: libedgeseg.so.{major}"):]
    assert re.search(rf"Name: EDGESEG_{major}\.{minor}\b", section.split("File:", 2)[1]), needs
    result = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = f"{major}.{minor}.{patch}"
    assert result.stdout.split() == [str(major), str(minor), str(patch), text, text]


@pytest.mark.parametrize(("request_", "found", "prelude"), [
    ("0.1", True, ""), ("0.1.0", True, ""), ("0.0", True, ""), ("0.1...<1.0", True, ""),
    ("0.2", False, ""), ("1.0", False, ""), ("0.0...0.0.9", False, ""),
    ("0.1", False, "set(CMAKE_SIZEOF_VOID_P 4)\n"),  # a 32-bit build is no match for this library
])
def test_cmake_version_requests_follow_the_major_version(sdk, tmp_path, request_, found, prelude):
    """SameMajorVersion: any request of this major version up to this one is met; a newer minor or
    another major is not (the version rows assume 0.1.0, and are checked against the header)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    assert header_version() == (0, 1, 0), "update the requests above with the version"
    (tmp_path / "CMakeLists.txt").write_text(
        f"cmake_minimum_required(VERSION 3.19)\nproject(p C)\n{prelude}"
        f"find_package(edgeseg {request_} REQUIRED)\n"
        "get_target_property(soname edgeseg::edgeseg IMPORTED_SONAME)\n"
        'message(STATUS "edgeseg=${edgeseg_VERSION} soname=${soname}")\n')
    result = subprocess.run(["cmake", "-S", str(tmp_path), "-B", str(tmp_path / "b"), f"-DCMAKE_PREFIX_PATH={sdk}"],
                            capture_output=True, text=True)
    if found:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "edgeseg=0.1.0 soname=libedgeseg.so.0" in result.stdout
    else:
        assert result.returncode != 0 and "edgeseg" in result.stderr and "0.1.0" in result.stderr, result.stderr


@pytest.mark.parametrize(("major", "removed", "kept"), [
    (1, ["libedgeseg.so.1.0.5"], ["libedgeseg.so.0", "libedgeseg.so.0.1.0"]),
    (0, ["libedgeseg.so.0.0.9"], ["libedgeseg.so.1", "libedgeseg.so.1.0.5", "libedgeseg.so.10.0.0"]),
])
def test_a_rebuild_removes_only_older_files_of_its_own_major_version(tmp_path, major, removed, kept):
    """make's plan (make -n) for a tree whose edgeseg.h says MAJOR.1.0, over a lib/ holding an
    older release of that major and of others: only the same major's old file goes; programs
    linked against another major load its files by their SONAME, which must stay."""
    root = tmp_path / "root"
    shutil.copytree(ROOT / "csrc", root / "csrc", ignore=shutil.ignore_patterns("tests"))
    header = root / "csrc" / "edgeseg.h"
    header.write_text(re.sub(r"(?m)^#define ES_VERSION_MAJOR \d+$", f"#define ES_VERSION_MAJOR {major}", header.read_text()))
    lib = tmp_path / "out" / "lib"
    lib.mkdir(parents=True)
    for name in ["libedgeseg.so.0", "libedgeseg.so.0.0.9", "libedgeseg.so.0.1.0", "libedgeseg.so.1", "libedgeseg.so.1.0.5",
                 "libedgeseg.so.10.0.0"]:
        (lib / name).write_bytes(b"")
    (lib / f"libedgeseg.so.{major}.1.0").unlink(missing_ok=True)
    plan = subprocess.run(["make", "-n", "-C", str(root / "csrc" / "sdk"), f"ROOT={root}", f"OUT={tmp_path / 'out'}"],
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    [rm] = [line.split()[2:] for line in plan.stdout.splitlines() if line.startswith("rm -f ")]
    assert sorted(Path(p).name for p in rm) == removed
    assert not set(kept) & {Path(p).name for p in rm}
