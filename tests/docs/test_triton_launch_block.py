"""The shell block of docs/serving-pipeline.md that starts Triton from the nvidia-pytriton wheel,
run as written up to the server's start: with the wheel installed the way that page and the
Makefile install it (``--no-deps``), every path it builds must exist."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "serving-pipeline.md"


def launch_block() -> list[str]:
    """The page's one ```bash block as logical lines (backslash continuations joined)."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", PAGE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, f"docs/serving-pipeline.md should hold one ```bash block, has {len(blocks)}"
    return blocks[0].replace("\\\n", " ").splitlines()


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton is not installed")
@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_triton_launch_block_finds_the_wheels_files(tmp_path):
    lines = launch_block()
    server = [i for i, line in enumerate(lines) if "tritonserver/bin/tritonserver" in line]
    assert len(server) == 1, "the block should end by starting tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if f"python_backend_stubs/{version}/" not in "\n".join(lines):
        pytest.skip(f"the page copies another Python's stub than this one ({version})")
    # the lines before the server's start, then the paths the server line hands to tritonserver
    script = "\n".join(["set -eu", *lines[:server[0]],
                        'test -x "$PT/tritonserver/bin/tritonserver"',
                        'test -d "$PT/../nvidia_pytriton.libs"',
                        'echo "$PT"'])
    bin_dir = str(Path(sys.executable).parent)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).name == "pytriton"
    stub = tmp_path / "backends" / "python" / "triton_python_backend_stub"
    assert stub.is_file() and (tmp_path / "backends" / "python" / "libtriton_python.so").is_file()
