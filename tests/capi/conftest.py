"""Fixtures of the C API tests: a real exported bundle, ``make sdk``'s output, and the HU inputs.

The bundle is the suite's shared one: ``edgeseg train`` + ``edgeseg export --int8`` of a tiny
U-Net (64x64, base 8) trained on phantom CT, so its masks are real shapes, not noise. The SDK is built
once per session into a temporary folder with ``make -C csrc/sdk``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import pytest

from tests.shared_builds import build_once

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
SERIES = DATA / "dcmqi_ct_liver" / "ct-3slice"
SAN_FLAGS = "-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer -g"


def _need_tools() -> None:
    pytest.importorskip("openvino")
    for tool in ("make", "cc", "c++", "pkg-config"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if subprocess.run(["pkg-config", "--exists", "libcrypto"]).returncode != 0:
        pytest.skip("OpenSSL's libcrypto headers are not installed (libssl-dev); libedgeseg hashes artifacts with it")


def build_sdk(out: Path, *, asan: bool = False) -> Path:
    """Build libedgeseg, its headers and package files into ``out`` (``make -C csrc/sdk``)."""
    _need_tools()
    args = ["make", "-s", "-C", str(ROOT / "csrc" / "sdk"), f"OUT={out}", f"PY={sys.executable}"]
    if asan:
        args.append(f"EXTRA={SAN_FLAGS} -DES_NO_MULTIVERSION")
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.fixture(scope="session")
def sdk(tmp_path_factory) -> Path:
    """A fresh ``make sdk`` tree: include/, lib/libedgeseg.so, lib/pkgconfig, lib/cmake; built once
    per test run, whichever worker needs it first (``tests.shared_builds``)."""
    _need_tools()
    return build_once(tmp_path_factory, "capi-sdk", lambda folder: build_sdk(folder / "sdk")) / "sdk"


@pytest.fixture(scope="session")
def asan_sdk(tmp_path_factory) -> Path:
    """The same tree built with address + undefined-behaviour sanitizers (for the sanitizer runs)."""
    _need_tools()
    return build_once(tmp_path_factory, "capi-asan-sdk", lambda folder: build_sdk(folder / "sdk", asan=True)) / "sdk"


@pytest.fixture(scope="session")
def bundle(exported_bundle) -> Path:
    """The suite's bundle (tests/conftest.py): the project's own train and export, ONNX FP32 and
    INT8 (and TorchScript, which the C API skips)."""
    return exported_bundle


@pytest.fixture(scope="session")
def dcmqi_hu() -> np.ndarray:
    """The dcmqi CT series (3 slices of 512x512) in HU as int16, the scanner's own type."""
    from edgeseg.data.dicom import read_dicom_series_with_refs

    volume = read_dicom_series_with_refs(SERIES)[0]
    hu = np.asarray(volume.hu)
    assert np.array_equal(hu, np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767
    return np.ascontiguousarray(hu.astype(np.int16))


@pytest.fixture(scope="session")
def phantom_hu() -> np.ndarray:
    """A phantom CT volume (6 slices of 200x176, not the model's 64x64) in HU as int16."""
    from edgeseg.data.phantom import synth_phantom

    volume = synth_phantom("case_capi", 3, shape=(6, 200, 176))
    return np.ascontiguousarray(np.round(volume.hu).astype(np.int16))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep OpenVINO's compiled models and the backend probe cache out of the user's home."""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))


def pkg_config(sdk: Path, *args: str) -> list[str]:
    """``pkg-config ARGS edgeseg`` against ``sdk``, split into compiler arguments."""
    env = {**os.environ, "PKG_CONFIG_PATH": str(sdk / "lib" / "pkgconfig")}
    out = subprocess.run(["pkg-config", *args, "edgeseg"], check=True, capture_output=True, text=True, env=env)
    return out.stdout.split()


def compile_with_pkg_config(sdk: Path, source: Path, exe: Path, extra: tuple[str, ...] = ()) -> Path:
    """Build one C or C++ program against ``sdk`` with the system compiler, warnings as errors."""
    cpp = source.suffix == ".cpp"
    compiler = ["c++", "-std=c++17"] if cpp else ["cc", "-std=c99"]
    cmd = [*compiler, "-O1", "-Wall", "-Wextra", "-Werror", *extra, "-o", str(exe), str(source),
           *pkg_config(sdk, "--cflags", "--libs"), "-lm"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


PROGRAMS = {"c": (ROOT / "examples" / "c" / "segment_raw.c", "segment_raw"),
            "cpp": (ROOT / "examples" / "cpp" / "segment.cpp", "segment"),
            "checks": (ROOT / "tests" / "capi" / "capi_checks.c", "capi_checks")}


@pytest.fixture(scope="session")
def programs(sdk, tmp_path_factory) -> dict[str, Path]:
    """The two examples and the test driver, built through pkg-config (once per test run, like the SDK)."""
    def build(out: Path) -> None:
        for source, exe in PROGRAMS.values():
            compile_with_pkg_config(sdk, source, out / exe)

    out = build_once(tmp_path_factory, "capi-programs", build)
    return {key: out / exe for key, (_, exe) in PROGRAMS.items()}


def _run_raw(program: Path, bundle: Path, precision: str, hu: np.ndarray, tmp: Path, *, mode: str = "") -> np.ndarray:
    """Run an example (or ``capi_checks slices``) on int16 ``hu``; return its uint8 labels."""
    src, dst = tmp / "hu.raw", tmp / f"labels-{precision}.raw"
    hu.astype("<i2").tofile(src)
    z, rows, cols = hu.shape
    args = [str(program), *([mode] if mode else []), str(bundle), precision, str(z), str(rows), str(cols), str(src), str(dst)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    labels = np.fromfile(dst, dtype=np.uint8)
    assert labels.size == hu.size
    return labels.reshape(hu.shape)


@pytest.fixture
def run_raw():
    """``run_raw(program, bundle, precision, hu, tmp, mode="")``: a C program's labels for ``hu``."""
    return _run_raw


@pytest.fixture
def run_checks(programs):
    """``run_checks(*args)``: run capi_checks; returns (code, message, all stdout lines)."""
    def run(*args: str) -> tuple[int, str, list[str]]:
        result = subprocess.run([str(programs["checks"]), *map(str, args)], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"capi_checks crashed ({result.returncode}): {result.stderr[-2000:]}"
        lines = result.stdout.splitlines()
        code, message = lines[0].split("\t", 1)
        return int(code), message, lines
    return run


@pytest.fixture(scope="session")
def build_tools() -> SimpleNamespace:
    """The build helpers above, for tests that make their own (sanitizer) builds."""
    return SimpleNamespace(build_sdk=build_sdk, compile=compile_with_pkg_config, san_flags=SAN_FLAGS)
