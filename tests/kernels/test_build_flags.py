"""Every build of the C kernels passes -ffp-contract=off (docs/kernels.md, Porting): the
near-tie recomputation needs ``a * b + c`` rounded twice, and clang contracts it into a fused
multiply-add by default even with -std=c99. No compiler here contracts differently in a way the
C test sees, so this checks the command lines: setup.py's compile (through a compiler that
records its arguments) and those that make would run for csrc/tests and csrc/sdk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ("-std=c99", "-ffp-contract=off")


def test_setup_py_compiles_the_kernels_without_contraction(tmp_path):
    log = tmp_path / "cc.log"
    recorder = tmp_path / "cc"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexit 1\n')  # records, then fails the build
    recorder.chmod(0o755)
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-temp", str(tmp_path / "t"),
                            "--build-lib", str(tmp_path / "l")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={"PATH": "/usr/bin:/bin", "CC": str(recorder), "HOME": str(tmp_path)})
    kernels = [line.split() for line in log.read_text().splitlines() if " csrc/" in line]
    assert build.returncode != 0 and kernels, build.stdout[-2000:] + build.stderr[-2000:]
    assert all(flag in kernels[0] for flag in FLAGS), kernels[0]


def test_the_makefiles_compile_the_kernels_without_contraction(tmp_path):
    runs = [["make", "-n", "-B", "-C", str(ROOT / "csrc" / "tests"), "run", "asan", "serial", "portable", "aarch64",
             f"BIN={tmp_path}"],
            ["make", "-n", "-B", "-C", str(ROOT / "csrc" / "sdk"), f"OUT={tmp_path / 'sdk'}"]]
    for run in runs:
        shown = subprocess.run(run, capture_output=True, text=True, timeout=120)
        compiles = [line.split() for line in shown.stdout.splitlines() if ".c" in line and "-o" in line.split()]
        assert compiles, shown.stdout + shown.stderr
        assert all(all(flag in words for flag in FLAGS) for words in compiles), shown.stdout
