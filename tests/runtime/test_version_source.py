"""``edgeseg.__version__`` comes from csrc/edgeseg.h, the version's one source, without
``importlib.metadata``: setup.py writes it into edgeseg/_version.py, and a checkout without that
file reads the header itself. Each case runs ``import edgeseg`` in a fresh process, the
package copied to a folder of its own with ``python -S`` (no site-packages: no installed
edgeseg metadata to fall back on), and reads back the version and the modules it imported."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.capi.test_soname import header_version

ROOT = Path(__file__).resolve().parents[2]
REPORT = "import edgeseg, json, sys; print(json.dumps([edgeseg.__version__, sorted(sys.modules)]))"


def _import_edgeseg(path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, *flags, "-c", REPORT], capture_output=True, text=True, cwd=path,
                          env=dict(env, PYTHONPATH=str(path)), timeout=120)


def _package_copy(tmp_path: Path, header_line: str | None, version_file: str | None) -> Path:
    """edgeseg/ without its build outputs; csrc/edgeseg.h holding header_line (or no header)."""
    shutil.copytree(ROOT / "edgeseg", tmp_path / "edgeseg",
                    ignore=shutil.ignore_patterns("_version.py", "__pycache__", "*.so", "*.c", "libedgeseg"))
    if header_line is not None:
        (tmp_path / "csrc").mkdir()
        (tmp_path / "csrc" / "edgeseg.h").write_text(header_line)
    if version_file is not None:
        (tmp_path / "edgeseg" / "_version.py").write_text(version_file)
    return tmp_path


def test_import_reads_the_checkouts_version_without_importlib_metadata():
    done = _import_edgeseg(ROOT)
    assert done.returncode == 0, done.stderr
    version, modules = json.loads(done.stdout)
    assert version == ".".join(map(str, header_version()))
    assert not {"importlib.metadata", "email", "csv", "zipfile"} & set(modules)


def test_setup_py_wrote_the_headers_version_into_version_py():
    text = (ROOT / "edgeseg" / "_version.py").read_text()
    assert re.findall(r'^__version__ = "(.+)"$', text, re.M) == [".".join(map(str, header_version()))]


def test_a_checkout_without_version_py_or_installed_metadata_reads_its_header(tmp_path):
    header = "#define ES_VERSION_MAJOR 3\n#define ES_VERSION_MINOR 14\n#define ES_VERSION_PATCH 2\n"
    done = _import_edgeseg(_package_copy(tmp_path, header, None), "-S")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0] == "3.14.2"


def test_an_installed_package_reads_version_py(tmp_path):
    done = _import_edgeseg(_package_copy(tmp_path, None, '__version__ = "7.0.1"\n'), "-S")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0] == "7.0.1"


@pytest.mark.parametrize("header_line", [None, "#define ES_VERSION_MAJOR 3\n"])
def test_neither_version_py_nor_a_version_in_the_header_is_a_one_line_import_error(tmp_path, header_line):
    done = _import_edgeseg(_package_copy(tmp_path, header_line, None), "-S")
    assert done.returncode != 0
    assert re.search(r"^ImportError: edgeseg: error: no edgeseg/_version.py .*; reinstall edgeseg$", done.stderr, re.M)
