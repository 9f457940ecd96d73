"""The C kernels say whether their SIMD paths or the portable ones were compiled: in
``edgeseg.kernels.build_info()``, ``edgeseg --version`` and ``edgeseg version --json``. Both
builds: the extension as ``make build`` makes it, and one built with ``CFLAGS=-DES_NO_SIMD`` (as
``make -C csrc/tests portable`` builds the C test) by setup.py into tmp_path and loaded in a
process of its own. The answer is judged from the platform and the flags, not from the code."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from edgeseg.kernels import build_info

ROOT = Path(__file__).resolve().parents[2]

# Load the extension at argv[1] as edgeseg.kernels._kernels, then print build_info and the
# kernels line of `edgeseg --version`.
LOAD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("edgeseg.kernels._kernels", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
from edgeseg.kernels import build_info
from edgeseg.cli.version import installation, version_text
line = [l for l in version_text(installation()).splitlines() if l.startswith("C kernels")][0]
print(json.dumps({"info": build_info(), "line": line, "file": module.__file__}))
"""


def _x86_gcc_linux() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and sys.platform == "linux" and \
        build_info()["compiler"].startswith("gcc")


def test_the_build_here_reports_its_simd_paths():
    """On x86-64 Linux with GCC the extension has SSE2 intrinsics and AVX2 clones (SSE2 alone where
    built with setup.py's EDGESEG_NO_MULTIVERSION=1, as the sanitizer run builds it); elsewhere
    (aarch64, ...) the portable paths. It says so in --version and --json."""
    clones = os.environ.get("EDGESEG_NO_MULTIVERSION") != "1"
    want = ("sse2+avx2" if clones else "sse2") if _x86_gcc_linux() else "portable"
    assert build_info()["simd"] == want
    shown = subprocess.run([sys.executable, "-m", "edgeseg.cli", "--version"], capture_output=True, text=True,
                           timeout=120)
    [line] = [line for line in shown.stdout.splitlines() if line.startswith("C kernels")]
    assert (f"SIMD {want}," if want != "portable" else "portable code, no SIMD paths,") in line, line
    facts = subprocess.run([sys.executable, "-m", "edgeseg.cli", "version", "--json"], capture_output=True, text=True,
                           timeout=120)
    assert json.loads(facts.stdout)["kernels"]["simd"] == want


def test_a_build_with_es_no_simd_reports_the_portable_paths(tmp_path):
    """setup.py build_ext with CFLAGS=-DES_NO_SIMD, into tmp_path: that extension reports
    "portable", and --version's kernels line says so."""
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-temp",
                            str(tmp_path / "t"), "--build-lib", str(tmp_path / "l")], cwd=ROOT, capture_output=True,
                           text=True, timeout=900, env=dict(os.environ, CFLAGS="-DES_NO_SIMD", HOME=str(tmp_path)))
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    [built] = (tmp_path / "l" / "edgeseg" / "kernels").glob("_kernels*")
    loaded = subprocess.run([sys.executable, "-c", LOAD, str(built)], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    facts = json.loads(loaded.stdout)
    assert Path(facts["file"]) == built  # this build, not the one in the tree
    assert facts["info"]["simd"] == "portable"
    assert "portable code, no SIMD paths" in facts["line"], facts["line"]

