"""The C kernels' test program cross-built for aarch64 and run under qemu-user
(`make -C csrc/tests aarch64`, what `make test-c-aarch64` runs): the portable paths with
aarch64's unsigned char, at -O3 as setup.py builds the extension. `make test-python` runs it
where the cross toolchain works (about 20 s) and skips it elsewhere (Debian:
gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = "Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
PROBE = "#include <stddef.h>\n#include <stdlib.h>\n#include <math.h>\nint main(void){return 0;}\n"


def toolchain_problem(folder: Path, env: dict[str, str]) -> str | None:
    """Why the cross toolchain cannot build and run a C program (the compiler or qemu missing,
    the aarch64 headers and C library missing: libc6-dev-arm64-cross is only recommended), or
    None. Uses the compiler, qemu and sysroot that `make aarch64` uses (CROSS_CC, QEMU, SYSROOT)."""
    cc, qemu = env.get("CROSS_CC", "aarch64-linux-gnu-gcc"), env.get("QEMU", "qemu-aarch64")
    sysroot = env.get("SYSROOT", "/usr/aarch64-linux-gnu")
    (folder / "probe.c").write_text(PROBE)
    steps = ([cc, str(folder / "probe.c"), "-o", str(folder / "probe"), "-lm"], [qemu, "-L", sysroot, str(folder / "probe")])
    for step in steps:
        try:
            run = subprocess.run(step, capture_output=True, text=True, timeout=120, env=env)
        except OSError as exc:
            return f"{step[0]}: {exc.strerror}"
        if run.returncode != 0:
            return f"{' '.join(step)}: exit {run.returncode}: {(run.stderr or run.stdout).strip()[-600:]}"
    return None


@pytest.mark.slow
def test_c_kernels_pass_on_aarch64(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    problem = toolchain_problem(tmp_path, env)
    if problem:
        pytest.skip(f"the aarch64 cross toolchain does not build and run a C program ({PACKAGES}): {problem}")
    run = subprocess.run(["make", "-s", "-C", str(ROOT / "csrc" / "tests"), "aarch64", f"BIN={tmp_path}"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "csrc/tests: all checks passed" in run.stdout
    # it ran the aarch64 build: no SSE2 path, char unsigned
    assert "portable (no SSE2), unsigned char" in run.stdout, run.stdout
    header = (tmp_path / "test_kernels_aarch64").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64


def test_a_cross_compiler_without_its_c_library_skips_the_test_naming_the_error(tmp_path):
    """The compiler and qemu on PATH but not the aarch64 headers and libraries (gcc-aarch64-linux-gnu
    installed with --no-install-recommends): the test above is skipped with the compiler's error,
    not failed. The compiler here is the real one told to look in no system folder."""
    real = subprocess.run(["sh", "-c", "command -v aarch64-linux-gnu-gcc"], capture_output=True, text=True)
    if real.returncode != 0:
        pytest.skip(f"needs aarch64-linux-gnu-gcc on PATH ({PACKAGES})")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "aarch64-linux-gnu-gcc").write_text(f"#!/bin/sh\nexec {real.stdout.strip()} -nostdinc -nostdlib \"$@\"\n")
    (shim / "aarch64-linux-gnu-gcc").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    for name in ("CROSS_CC", "QEMU", "SYSROOT", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          f"{Path(__file__)}::test_c_kernels_pass_on_aarch64", "--basetemp", str(tmp_path / "t")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0 and "1 skipped" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]
    assert "does not build and run a C program" in run.stdout and "stddef.h" in run.stdout, run.stdout[-3000:]
