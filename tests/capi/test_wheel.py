"""The sdist and the wheel: built offline from a copy of the source tree (``python -m build
--no-isolation``: sdist first, then the wheel from the unpacked sdist), the sdist carries what
the C code is built from, the wheel ships libedgeseg with its headers and package files and the
named training recipes, ``edgeseg sdk --cflags --libs`` of the wheel installed in a fresh venv
builds examples/c/segment_raw.c into a program that gives the Python runtime's masks, and that
install resolves ``--recipe covid-infection`` from its own package data. Both carry edgeseg's
licence and cJSON's, and neither carries tests/ or Cython's generated C in the wheel."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeseg import __version__
from edgeseg.runtime import Segmenter
from tests.capi.test_soname import dynamic_entries

ROOT = Path(__file__).resolve().parents[2]
# What a build from a checkout must not pick up: local builds, caches, the venv, and the
# generated edgeseg/_version.py (the build must write it from csrc/edgeseg.h itself).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "runs", "dist", "*.egg-info", "__pycache__", "*.so",
                                    "*.o", ".pytest_cache", ".benchmarks", ".hypothesis", "_kernels.c", "_version.py")
VERSION_PY = f'__version__ = "{__version__}"\n'


def test_sdist_and_wheel_carry_the_generated_version_file(dists):
    with tarfile.open(dists["sdist"]) as tar:
        [member] = [m for m in tar.getmembers() if m.name.endswith("/edgeseg/_version.py")]
        assert tar.extractfile(member).read().decode().endswith(VERSION_PY)
    with zipfile.ZipFile(dists["wheel"]) as whl:
        assert whl.read("edgeseg/_version.py").decode().endswith(VERSION_PY)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """{"sdist": ..., "wheel": ...} built from a copy of the tree, never in the tree itself."""
    pytest.importorskip("build")
    pytest.importorskip("openvino")
    if shutil.which("cc") is None or shutil.which("make") is None:
        pytest.skip("no C toolchain")
    tmp = tmp_path_factory.mktemp("dist")
    src = shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCE, symlinks=False)
    out = tmp / "out"
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    [sdist] = out.glob("edgeseg-*.tar.gz")
    [wheel] = out.glob("edgeseg-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def _shipped_recipes() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in (ROOT / "edgeseg" / "recipes").glob("*.toml")}


def test_sdist_carries_the_c_sources_and_recipes(dists):
    with tarfile.open(dists["sdist"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    csrc = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*")
            if p.is_file() and p.suffix in {".c", ".h", ".hpp", ".in", ".map"}}
    assert csrc and csrc <= names
    assert {"csrc/sdk/Makefile", "setup.py", "pyproject.toml", "edgeseg/kernels/_kernels.pyx",
            "examples/c/segment_raw.c", "examples/cpp/segment.cpp"} <= names
    assert {"edgeseg/recipes/covid-infection.toml", "edgeseg/recipes/liver-ct.toml"} <= _shipped_recipes() <= names
    assert {"LICENSE", "csrc/third_party/cjson/LICENSE", "csrc/third_party/cjson/cJSON.c"} <= names
    assert "edgeseg/py.typed" in names  # PEP 561: an install built from the sdist is typed too
    # not a partial, unrunnable test tree, nor test data under other licences
    assert not [n for n in names if n == "tests" or n.startswith("tests/")]


def test_wheel_ships_libedgeseg_headers_and_package_files(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
    sdk = "edgeseg/libedgeseg/"
    # the library once, under its SONAME; libedgeseg.so (for -ledgeseg) a linker script naming it
    assert sorted(n for n in names if n.startswith(f"{sdk}lib/libedgeseg.so")) == [f"{sdk}lib/libedgeseg.so",
                                                                                 f"{sdk}lib/libedgeseg.so.0"]
    assert {f"{sdk}lib/libedgeseg.so", f"{sdk}include/edgeseg.h", f"{sdk}include/edgeseg.hpp",
            f"{sdk}include/edgeseg_kernels.h", f"{sdk}lib/pkgconfig/edgeseg.pc",
            f"{sdk}lib/cmake/edgeseg/edgeseg-config.cmake",
            f"{sdk}lib/cmake/edgeseg/edgeseg-config-version.cmake"} <= names
    assert any(n.startswith("edgeseg/kernels/_kernels") and n.endswith(".so") for n in names)
    assert "edgeseg/kernels/_kernels.c" not in names  # Cython's output, the sdist's business
    assert "edgeseg/py.typed" in names  # PEP 561: type checkers read the installed package's annotations
    assert {"edgeseg/recipes/covid-infection.toml", "edgeseg/recipes/liver-ct.toml"} <= _shipped_recipes() <= names
    profiles = {f"edgeseg/export/profiles/{p.name}" for p in (ROOT / "export").glob("*.toml")}
    assert {"edgeseg/export/profiles/cpu-int8.toml", "edgeseg/export/profiles/gpu-fp16.toml"} <= profiles <= names


# edgeseg's own licence, and that of the cJSON compiled into libedgeseg (the wheel's library, the sdist's source).
LICENCES = {"LICENSE": ("Apache License", "Version 2.0, January 2004"),
            "csrc/third_party/cjson/LICENSE": ("Copyright (c) 2009-2017 Dave Gamble", "Permission is hereby granted")}


def test_both_carry_the_licences_as_an_spdx_expression_and_their_texts(dists):
    with tarfile.open(dists["sdist"]) as tar:
        sdist = {m.name.split("/", 1)[-1]: m for m in tar.getmembers()}
        sdist_texts = {name: tar.extractfile(sdist[name]).read().decode() for name in LICENCES}
        pkg_info = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/PKG-INFO"))).read().decode()
    with zipfile.ZipFile(dists["wheel"]) as whl:
        metadata = whl.read(next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        [info] = {n.split("/")[0] for n in whl.namelist() if n.split("/")[0].endswith(".dist-info")}
        wheel_texts = {name: whl.read(f"{info}/licenses/{name}").decode() for name in LICENCES}
    for name, marks in LICENCES.items():
        text = (ROOT / name).read_text()
        assert all(mark in text for mark in marks)
        assert sdist_texts[name] == text and wheel_texts[name] == text
    for meta in (pkg_info, metadata):
        lines = meta.splitlines()
        assert "License-Expression: Apache-2.0 AND MIT" in lines
        assert {f"License-File: {name}" for name in LICENCES} <= set(lines)


@pytest.fixture(scope="module")
def installed(dists, tmp_path_factory) -> tuple[Path, Path]:
    """(venv, its site-packages): the wheel installed without dependencies in a fresh venv."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies (numpy, click, openvino) come from this environment's site-packages, as a
    # plain path: its editable edgeseg (a .pth hook) must not shadow the installed wheel.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                              "--no-deps", "--no-index", str(dists["wheel"])], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv, site


def test_installed_wheel_builds_and_runs_the_c_example(installed, bundle, phantom_hu, run_raw, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGESEG_SDK", raising=False)
    venv, site = installed
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    flags = subprocess.run([str(venv / "bin" / "edgeseg"), "sdk", "--cflags", "--libs"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert flags.returncode == 0, flags.stderr
    assert f"-I{site / 'edgeseg' / 'libedgeseg' / 'include'}" in flags.stdout.split()
    exe = tmp_path / "segment_raw"
    compiled = subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-o", str(exe),
                               str(ROOT / "examples" / "c" / "segment_raw.c"), *flags.stdout.split()],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    assert "libedgeseg.so.0" in dynamic_entries(exe, "NEEDED")
    # What `edgeseg --version` names is the file dlopen loads (libedgeseg.so is a linker script here).
    loaded = subprocess.run([str(venv / "bin" / "python"), "-c", "import ctypes; from edgeseg import sdk; "
                             "lib = ctypes.CDLL(str(sdk.library_path())); lib.es_version.restype = ctypes.c_char_p; "
                             "print(sdk.library_path().name, lib.es_version().decode())"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["libedgeseg.so.0", __version__]
    with Segmenter.load(bundle, backend="openvino:int8") as seg:
        expected = seg.predict_volume(phantom_hu)
    got = run_raw(exe, bundle, "int8", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != expected)) == 0


def _in_the_install(installed, tmp_path, program: str, *args) -> subprocess.CompletedProcess:
    """``program`` (``python``, ``edgeseg``) of the wheel's venv with ``args``, run in tmp_path
    with nothing of this environment on its PATH."""
    venv, _ = installed
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([str(venv / "bin" / program), *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


def test_installed_wheel_resolves_the_named_recipes(installed, tmp_path, assert_one_line_error):
    _, site = installed
    done = _in_the_install(installed, tmp_path, "python", "-c",
                           "from edgeseg.train.recipes import load_recipe, recipe_names; "
                           "r = load_recipe('covid-infection'); print(r.path); print(r.sha256); print(','.join(recipe_names()))")
    assert done.returncode == 0, done.stderr
    path, sha256, names = done.stdout.split()
    source = ROOT / "edgeseg" / "recipes" / "covid-infection.toml"
    assert Path(path) == site / "edgeseg" / "recipes" / "covid-infection.toml"
    assert sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert names == "covid-infection,liver-ct"
    # An unknown name lists the shipped recipes; a known one gets past the recipe to the data.
    unknown = _in_the_install(installed, tmp_path, "edgeseg", "train", "--recipe", "no-such", "--out", tmp_path / "a")
    assert_one_line_error(unknown, "'no-such' is neither a file nor a known recipe (covid-infection, liver-ct)")
    known = _in_the_install(installed, tmp_path, "edgeseg", "train", "--recipe", "covid-infection",
                            "--data", tmp_path / "missing", "--out", tmp_path / "b", "--quiet")
    assert_one_line_error(known, f"data folder not found: {tmp_path / 'missing'}")


def test_installed_wheel_resolves_the_export_profiles(installed, tmp_path):
    """`--profile cpu-int8` looked only in the source checkout: an installed package found none."""
    _, site = installed
    done = _in_the_install(installed, tmp_path, "python", "-c",
                           "from edgeseg.export.profiles import load_profile, resolve_profile; "
                           "print(resolve_profile('cpu-int8')); print(load_profile('gpu-fp16').fp16)")
    assert done.returncode == 0, done.stderr
    path, fp16 = done.stdout.split()
    assert Path(path) == site / "edgeseg" / "export" / "profiles" / "cpu-int8.toml"
    assert Path(path).read_bytes() == (ROOT / "export" / "cpu-int8.toml").read_bytes() and fp16 == "True"
    unknown = _in_the_install(installed, tmp_path, "python", "-c",
                              "from edgeseg.export.profiles import load_profile; load_profile('no-such')")
    assert "one of ['cpu-int8', 'edge-int8', 'gpu-fp16']" in unknown.stderr
