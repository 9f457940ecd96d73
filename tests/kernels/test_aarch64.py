"""The C kernels' test program cross-built for aarch64 and run under qemu-user
(`make -C csrc/tests aarch64`, what `make test-c-aarch64` runs): the portable paths with
aarch64's unsigned char, at -O3 as setup.py builds the extension. Skipped where the cross
compiler or qemu is not installed (Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross
qemu-user)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("aarch64-linux-gnu-gcc", "qemu-aarch64")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)} on PATH "
                    "(Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)")
def test_c_kernels_pass_on_aarch64(tmp_path):
    run = subprocess.run(["make", "-s", "-C", str(ROOT / "csrc" / "tests"), "aarch64", f"BIN={tmp_path}"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "csrc/tests: all checks passed" in run.stdout
    # it ran the aarch64 build: no SSE2 path, char unsigned
    assert "portable (no SSE2), unsigned char" in run.stdout, run.stdout
    header = (tmp_path / "test_kernels_aarch64").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
