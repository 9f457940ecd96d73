"""The serve tests speak to dcmtk's storescu, also where the venv's bin/ (pynetdicom's apps of the
same names) comes first on PATH, as with the venv active."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.dcmtk_path import dcmtk_first


def test_the_venvs_pynetdicom_apps_do_not_hide_dcmtk(tmp_path):
    venv_bin = tmp_path / "bin"
    venv_bin.mkdir()
    app = venv_bin / "storescu"
    app.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('usage: storescu [options] addr port path')\n")
    app.chmod(0o755)
    dcmtk = shutil.which("storescu", path=os.environ["PATH"])
    if dcmtk is None or Path(dcmtk).read_bytes()[:2] == b"#!":
        pytest.skip("dcmtk is not installed: apt-get install dcmtk")
    path = dcmtk_first(os.pathsep.join([str(venv_bin), os.environ["PATH"]]))
    found = shutil.which("storescu", path=path)
    assert Path(found).resolve() == Path(dcmtk).resolve()
    done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "dcmtk" in done.stdout
    assert shutil.which("python", path=path) == shutil.which("python", path=os.pathsep.join([str(venv_bin), os.environ["PATH"]]))


def test_the_serve_tests_run_dcmtk_with_the_venv_first_on_path():
    """conftest.py has already set PATH: storescu is dcmtk's (where dcmtk is installed at all)."""
    found = shutil.which("storescu")
    if found is None:
        pytest.skip("dcmtk is not installed: apt-get install dcmtk")
    assert Path(found).read_bytes()[:2] != b"#!", found
