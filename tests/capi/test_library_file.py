"""Which ``libedgeseg.so.MAJOR`` a program loads from an SDK folder: the major version of the
library on disk, not of the Python package. The folders are made here, their ELF libraries
compiled with the system's cc under a SONAME of their own; readelf is the oracle for the SONAME
that edgeseg.sdk.elf_soname reads from the dynamic section."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg import sdk
from edgeseg.errors import EdgesegError
from tests.capi.test_soname import dynamic_entries

ROOT = Path(__file__).resolve().parents[2]
# the CLI of the environment running the tests (a checkout's .venv, or make test-floor's venv)
EDGESEG = Path(sys.executable).with_name("edgeseg")


def _elf(path: Path, soname: str | None) -> Path:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    source = path.with_suffix(".c")
    source.write_text("int es_probe(void) { return 3; }\n")
    flags = [f"-Wl,-soname,{soname}"] if soname else []
    subprocess.run(["cc", "-shared", "-fPIC", *flags, "-o", str(path), str(source)], check=True)
    source.unlink()
    return path


def _prefix(tmp_path: Path, files: dict[str, str | None]) -> Path:
    """include/edgeseg.h and lib/NAME for each name: a link to the value, or a plain file."""
    (tmp_path / "include").mkdir(parents=True)
    shutil.copy(ROOT / "csrc" / "edgeseg.h", tmp_path / "include")
    (tmp_path / "lib").mkdir()
    for name, target in files.items():
        if target is None:
            (tmp_path / "lib" / name).write_bytes(b"")
        else:
            os.symlink(target, tmp_path / "lib" / name)
    return tmp_path


def test_an_sdk_of_another_major_version_is_loaded_by_its_own_soname(tmp_path, monkeypatch):
    prefix = _prefix(tmp_path, {"libedgeseg.so.3": "libedgeseg.so.3.0.1", "libedgeseg.so": "libedgeseg.so.3"})
    _elf(prefix / "lib" / "libedgeseg.so.3.0.1", "libedgeseg.so.3")
    monkeypatch.setenv("EDGESEG_SDK", str(prefix))
    assert sdk.sdk_prefix() == prefix and sdk.library_path() == prefix / "lib" / "libedgeseg.so.3"
    shown = subprocess.run([str(EDGESEG), "--version"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, EDGESEG_SDK=str(prefix)))
    assert shown.returncode == 0 and str(prefix / "lib" / "libedgeseg.so.3") in shown.stdout, shown.stdout + shown.stderr


def test_the_soname_is_read_from_the_elf_dynamic_section(tmp_path):
    lib = _elf(tmp_path / "libx.so", "libedgeseg.so.7")
    assert sdk.elf_soname(lib) == "libedgeseg.so.7" == dynamic_entries(lib, "SONAME")[0]
    bare = _elf(tmp_path / "liby.so", None)
    assert sdk.elf_soname(bare) is None and dynamic_entries(bare, "SONAME") == []
    script = tmp_path / "script.so"
    script.write_text("INPUT(libedgeseg.so.7)\n")
    assert sdk.elf_soname(script) is None


@pytest.mark.parametrize("linker_name", ["link", "link to the full version", "elf", "script"])
def test_several_majors_resolve_to_the_one_libedgeseg_so_names(tmp_path, linker_name):
    prefix = _prefix(tmp_path, {"libedgeseg.so.0": None, "libedgeseg.so.2": None, "libedgeseg.so.3": None})
    link = prefix / "lib" / "libedgeseg.so"
    if linker_name == "link":
        os.symlink("libedgeseg.so.2", link)
    elif linker_name == "link to the full version":  # libedgeseg.so -> libedgeseg.so.2.1.0, as some installs make it
        (prefix / "lib" / "libedgeseg.so.2.1.0").write_bytes(b"")
        os.symlink("libedgeseg.so.2.1.0", link)
    elif linker_name == "elf":
        _elf(link, "libedgeseg.so.2")
    else:
        link.write_text("/* GNU ld script */\nINPUT(libedgeseg.so.2)\n")
    assert sdk.library_file(prefix / "lib") == prefix / "lib" / "libedgeseg.so.2"


def test_several_majors_that_libedgeseg_so_does_not_name_are_a_one_line_error(tmp_path):
    prefix = _prefix(tmp_path, {"libedgeseg.so.0": None, "libedgeseg.so.1": None})
    with pytest.raises(EdgesegError, match=r"several major versions \(libedgeseg.so.0, libedgeseg.so.1\)"):
        sdk.library_file(prefix / "lib")
    done = subprocess.run([str(EDGESEG), "sdk", "--prefix"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, EDGESEG_SDK=str(prefix)))
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1 and "several major" in done.stderr


def test_the_soname_of_a_32_bit_library_is_read(tmp_path):
    """A 32-bit ELF (an armv7 edge device's libedgeseg) keeps its section table offset, entry
    sizes and dynamic entries at other places and widths than a 64-bit one: readelf is the oracle."""
    source = tmp_path / "probe.c"
    source.write_text("int es_probe(void) { return 3; }\n")
    lib = tmp_path / "libedgeseg.so.5"
    built = subprocess.run(["cc", "-m32", "-nostdlib", "-shared", "-fPIC", "-Wl,-soname,libedgeseg.so.5", "-o",
                            str(lib), str(source)], capture_output=True, text=True) if shutil.which("cc") else None
    if built is None or built.returncode != 0:
        pytest.skip("no C compiler that builds 32-bit ELF (cc -m32)")
    assert lib.read_bytes()[4] == 1  # ELFCLASS32
    assert sdk.elf_soname(lib) == "libedgeseg.so.5" == dynamic_entries(lib, "SONAME")[0]


def test_a_relative_edgeseg_sdk_gives_absolute_flags(tmp_path):
    # the flags are used from other folders (a build tree, a recipe's cd): relative ones would miss
    prefix = _prefix(tmp_path / "rel" / "sdk", {"libedgeseg.so": "libedgeseg.so.0"})
    _elf(prefix / "lib" / "libedgeseg.so.0", "libedgeseg.so.0")
    done = subprocess.run([str(EDGESEG), "sdk", "--cflags", "--libs"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=dict(os.environ, EDGESEG_SDK="rel/sdk"))
    assert done.returncode == 0, done.stderr
    lib = prefix / "lib"
    assert done.stdout.split() == [f"-I{prefix / 'include'}", f"-L{lib}", f"-Wl,-rpath,{lib}", "-ledgeseg"]


def test_a_whitespace_edgeseg_sdk_is_quoted_in_the_error(tmp_path):
    done = subprocess.run([str(EDGESEG), "sdk", "--prefix"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=dict(os.environ, EDGESEG_SDK="  "))
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # quoted: the blank value is seen (the one-line error folds its run of spaces into one)
    assert re.match(r"edgeseg: error: EDGESEG_SDK='\s+' holds no libedgeseg", done.stderr), done.stderr
