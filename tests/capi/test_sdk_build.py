"""Building against libedgeseg the three documented ways: pkg-config (conftest), CMake's
find_package(edgeseg), and ``edgeseg sdk --cflags --libs``; each program then segments."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeseg.cli.main import cli
from edgeseg.runtime import Segmenter
from tests.capi.test_soname import dynamic_entries
from tests.guarded_cli import GuardedCliRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def python_masks(bundle, phantom_hu):
    with Segmenter.load(bundle, backend="openvino:int8") as seg:
        return seg.predict_volume(phantom_hu)


def test_cmake_find_package_builds_both_examples(sdk, bundle, phantom_hu, python_masks, run_raw, tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(ROOT / "examples"), "-B", str(build), f"-DCMAKE_PREFIX_PATH={sdk}",
                                "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    for name in ("segment_raw", "segment"):
        assert "libedgeseg.so.0" in dynamic_entries(build / name, "NEEDED")
        got = run_raw(build / name, bundle, "int8", phantom_hu, tmp_path)
        assert int(np.count_nonzero(got != python_masks)) == 0


def test_edgeseg_sdk_flags_build_a_program(sdk, bundle, phantom_hu, python_masks, run_raw, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_SDK", str(sdk))
    result = GuardedCliRunner().invoke(cli, ["sdk", "--cflags", "--libs"])
    assert result.exit_code == 0, result.output
    flags = result.output.split()
    assert f"-I{sdk / 'include'}" in flags and "-ledgeseg" in flags
    exe = tmp_path / "segment_raw"
    compiled = subprocess.run(["cc", "-std=c99", "-o", str(exe), str(ROOT / "examples" / "c" / "segment_raw.c"), *flags],
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    got = run_raw(exe, bundle, "int8", phantom_hu, tmp_path)
    assert int(np.count_nonzero(got != python_masks)) == 0


def test_edgeseg_sdk_prefix_and_cmake_dir(sdk, monkeypatch):
    monkeypatch.setenv("EDGESEG_SDK", str(sdk))
    result = GuardedCliRunner().invoke(cli, ["sdk", "--prefix", "--cmake-dir"])
    assert result.exit_code == 0
    prefix, cmake_dir = result.output.split()
    assert prefix == str(sdk) and (sdk / "lib" / "cmake" / "edgeseg" / "edgeseg-config.cmake").samefile(
        f"{cmake_dir}/edgeseg-config.cmake")


def test_edgeseg_sdk_naming_a_folder_without_a_build_is_one_line_error(tmp_path, monkeypatch):
    # EDGESEG_SDK is the only place looked at: the line names the variable, not 'make sdk' alone.
    monkeypatch.setenv("EDGESEG_SDK", str(tmp_path / "nothing"))
    result = GuardedCliRunner().invoke(cli, ["sdk", "--libs"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"edgeseg: error: EDGESEG_SDK={str(tmp_path / 'nothing')!r} holds no libedgeseg")
    assert "unset it" in result.output


def _declared_functions() -> set[str]:
    """The functions the two public headers declare: every name followed by "(" at file level,
    once comments, preprocessor lines and function-pointer typedefs are taken out."""
    import re

    names = set()
    for header in ("edgeseg.h", "edgeseg_kernels.h"):
        text = (ROOT / "csrc" / header).read_text()
        text = re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)
        text = re.sub(r"^\s*#(?:[^\n]*\\\n)*[^\n]*", " ", text, flags=re.M)
        text = re.sub(r"typedef[^;]*\(\s*\*[^;]*;", " ", text)
        for statement in text.split(";"):
            match = re.search(r"\b([A-Za-z_]\w*)\s*\((?:[^()]|\([^()]*\))*\)\s*$", statement.strip())
            if match and not re.search(r"\b(?:typedef|struct|enum)\b[^(]*$", statement.split("(")[0]):
                names.add(match.group(1))
    return names


def test_the_library_exports_exactly_what_the_headers_declare_in_its_version_node(sdk):
    """libedgeseg.map lists the exported symbols by hand: a function added to a header but not
    to the map would link in the tests' own build and fail in an application's. Each one is in
    a version node EDGESEG_MAJOR.N, N up to this release's minor version (the release that added it)."""
    import re

    from tests.capi.test_soname import header_version, readelf

    major, minor, _ = header_version()
    listing = readelf("--dyn-syms", "-W", str(sdk / "lib" / "libedgeseg.so"))
    exported, versions = set(), set()
    for line in listing.splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name; defined globals only (UND: what it imports)
        if len(fields) >= 8 and fields[0].endswith(":") and fields[6] not in ("UND", "ABS") \
                and fields[4] in ("GLOBAL", "WEAK"):
            name, _, version = fields[7].replace("@@", "@").partition("@")
            exported.add(name)
            versions.add(version)
    declared = _declared_functions()
    assert {"es_open", "es_set_tta", "es_labels", "es_preprocess", "es_status_message", "es_version"} <= declared
    assert exported == declared, f"declared, not exported: {sorted(declared - exported)}; " \
                                 f"exported, not declared: {sorted(exported - declared)}"
    # every symbol in a node of this major version, none newer than this release's
    nodes = {version: re.fullmatch(rf"EDGESEG_{major}\.(\d+)", version) for version in versions}
    assert all(nodes.values()) and max(int(m.group(1)) for m in nodes.values()) <= minor, \
        f"exported symbols' versions: {sorted(versions)}, not nodes EDGESEG_{major}.N with N <= {minor}"


def test_the_sanitizer_build_goes_where_out_says(tmp_path):
    """``make -C csrc/sdk asan OUT=DIR`` builds into DIR, as the other targets do; without OUT into
    build/sdk-asan (a dry run of every step: -n -B)."""
    import sys

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    default, out = ROOT / "build" / "sdk-asan", tmp_path / "asan-sdk"
    for extra, where, not_there in (([f"OUT={out}"], out, default), ([], default, out)):
        plan = subprocess.run(["make", "-n", "-B", "-C", str(ROOT / "csrc" / "sdk"), "asan", f"PY={sys.executable}", *extra],
                              capture_output=True, text=True)
        assert plan.returncode == 0, plan.stderr
        assert f"-o {where}/lib/libedgeseg.so" in plan.stdout and "-fsanitize=address" in plan.stdout, plan.stdout
        assert str(not_there) not in plan.stdout
