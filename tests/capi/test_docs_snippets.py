"""The C program and the CMake snippet of docs/c-api.md, as a reader would paste them: they build
against ``make sdk``'s output and give the Python runtime's mask for a 512x512 int16 slice."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.runtime import Segmenter

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "c-api.md"


def _block(language: str) -> str:
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"docs/c-api.md should hold one ```{language} block, has {len(blocks)}"
    return blocks[0]


@pytest.fixture(scope="module")
def slice_and_mask(bundle, dcmqi_hu) -> tuple[np.ndarray, np.ndarray]:
    """The middle dcmqi slice (512x512, the size the docs' program reads) and Python's mask
    with the backend the program's "auto" precision takes (INT8 on OpenVINO)."""
    hu = np.ascontiguousarray(dcmqi_hu[1])
    assert hu.shape == (512, 512)
    with Segmenter.load(bundle, backend="openvino:int8") as seg:
        return hu, seg.predict(hu)


def test_the_c_program_is_twenty_lines_and_gives_pythons_mask(sdk, bundle, slice_and_mask, build_tools, tmp_path):
    source = _block("c")
    assert len(source.strip().splitlines()) <= 20
    (tmp_path / "app.c").write_text(source)
    exe = build_tools.compile(sdk, tmp_path / "app.c", tmp_path / "app")
    hu, expected = slice_and_mask
    hu.astype("<i2").tofile(tmp_path / "slice.raw")
    result = subprocess.run([str(exe), str(bundle), str(tmp_path / "slice.raw")], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    got = np.frombuffer(result.stdout, dtype=np.uint8).reshape(512, 512)
    assert int(np.count_nonzero(got != expected)) == 0


def test_the_c_program_reports_a_missing_bundle(sdk, build_tools, tmp_path):
    (tmp_path / "app.c").write_text(_block("c"))
    exe = build_tools.compile(sdk, tmp_path / "app.c", tmp_path / "app")
    np.zeros((512, 512), "<i2").tofile(tmp_path / "slice.raw")
    result = subprocess.run([str(exe), str(tmp_path / "nowhere"), str(tmp_path / "slice.raw")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and "nowhere" in result.stderr


def test_the_cmake_snippet_builds_an_app(sdk, bundle, dcmqi_hu, slice_and_mask, run_raw, tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed")
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(_block("cmake"))
    shutil.copy(ROOT / "examples" / "cpp" / "segment.cpp", app / "main.cpp")
    build = tmp_path / "build"
    # the configure option as the snippet's comment gives it, through the shell, with edgeseg on PATH
    option = re.search(r'# configure with (-DCMAKE_PREFIX_PATH="[^"]*")', _block("cmake"))
    assert option, "the CMake snippet should say how to configure (-DCMAKE_PREFIX_PATH=...)"
    env = dict(os.environ, EDGESEG_SDK=str(sdk), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for cmd in (f"cmake -S {app} -B {build} {option.group(1)}", f"cmake --build {build}"):
        result = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    assert f"CMAKE_PREFIX_PATH:UNINITIALIZED={sdk}" in (build / "CMakeCache.txt").read_text()
    hu, expected = slice_and_mask
    got = run_raw(build / "scanner_app", bundle, "int8", hu[None], tmp_path)
    assert int(np.count_nonzero(got[0] != expected)) == 0


def _command_lines() -> list[str]:
    """The indented shell lines between the C program and the CMake section: the build line, the
    pkg-config alternative (a comment) and the lines that make a slice and run the program."""
    text = PAGE.read_text()
    start = text.index("\n```\n", text.index("```c\n")) + 5
    part = text[start:text.index("## CMake")]
    return [line[4:] for line in part.splitlines() if line.startswith("    ") and not line.startswith("     ")]


def test_the_command_lines_build_and_run_the_program_as_written(sdk, bundle, build_tools, tmp_path):
    lines = _command_lines()
    assert lines[0] == "cc app.c $(edgeseg sdk --cflags --libs) -o app", lines
    assert any(line.startswith("./app ") for line in lines), lines
    (tmp_path / "app.c").write_text(_block("c"))
    (tmp_path / "runs" / "quick").mkdir(parents=True)
    (tmp_path / "runs" / "quick" / "bundle").symlink_to(bundle, target_is_directory=True)
    env = dict(os.environ, EDGESEG_SDK=str(sdk), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for line in lines:
        # the alternative after "# or:" is run too, on its own
        command = line.split("# or: ", 1)[1] if line.startswith("# or: ") else line
        done = subprocess.run(["bash", "-c", f"set -o pipefail; {command}"], cwd=tmp_path, env=env, capture_output=True,
                              timeout=600)
        assert done.returncode == 0, (command, done.stderr.decode())
        if "pkg-config" in command:
            assert "-ledgeseg" in done.stdout.decode().split(), done.stdout
    hu = np.fromfile(tmp_path / "slice.raw", dtype="<i2").reshape(512, 512)
    with Segmenter.load(bundle, backend="openvino:int8") as seg:
        expected = seg.predict(hu)
    got = np.fromfile(tmp_path / "labels.raw", dtype=np.uint8).reshape(512, 512)
    assert np.count_nonzero(expected) > 0 and int(np.count_nonzero(got != expected)) == 0
