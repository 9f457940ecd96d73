"""The serve tests speak to dcmtk's storescu, also where the venv's bin/ (pynetdicom's apps of the
same names) comes first on PATH, as with the venv active."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.dcmtk_path import TOOLS, dcmtk_first, dcmtk_tool

ROOT = Path(__file__).resolve().parents[2]


def test_the_venvs_pynetdicom_apps_do_not_hide_dcmtk(tmp_path):
    venv_bin = tmp_path / "bin"
    venv_bin.mkdir()
    app = venv_bin / "storescu"
    app.write_text(f"#!{sys.executable}\nimport sys\nsys.exit('usage: storescu [options] addr port path')\n")
    app.chmod(0o755)
    dcmtk = dcmtk_tool("storescu")
    if dcmtk is None:
        pytest.skip("dcmtk's storescu is not installed: apt-get install dcmtk")
    path = dcmtk_first(os.pathsep.join([str(venv_bin), os.environ["PATH"]]))
    found = shutil.which("storescu", path=path)
    assert Path(found).resolve() == Path(dcmtk).resolve()
    done = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "dcmtk" in done.stdout
    assert shutil.which("python", path=path) == shutil.which("python", path=os.pathsep.join([str(venv_bin), os.environ["PATH"]]))


def test_the_serve_tests_run_dcmtk_with_the_venv_first_on_path():
    """conftest.py has already set PATH: storescu is dcmtk's (where dcmtk is installed at all)."""
    if dcmtk_tool("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed: apt-get install dcmtk")
    found = shutil.which("storescu")
    assert Path(found).read_bytes()[:2] != b"#!", found


def _pytest(tmp_path: Path, path: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """pytest run on ``args`` in its own process with PATH ``path``; its outcomes in report.xml."""
    env = dict(os.environ, PATH=path, OMP_NUM_THREADS="1", **(env or {}))
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:xdist", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-o", f"cache_dir={tmp_path / 'cache'}",
                           f"--junitxml={tmp_path / 'report.xml'}", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def _outcomes(tmp_path: Path) -> dict[str, str]:
    """test name -> passed, failed, error or skipped (with the reason), from report.xml."""
    import xml.etree.ElementTree as ET

    outcomes = {}
    for case in ET.parse(tmp_path / "report.xml").iter("testcase"):
        found = [(child.tag, child.get("message", "")) for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = f"{found[0][0]}: {found[0][1]}" if found else "passed"
    return outcomes


def test_without_dcmtk_the_dcmtk_tests_skip_and_never_run_pynetdicoms_apps(tmp_path):
    """A PATH with pynetdicom's apps (the venv's bin/) and no dcmtk: the tests written against
    dcmtk skip, saying so, instead of failing on pynetdicom's storescu of the same name."""
    venv_bin = Path(sys.executable).parent
    if shutil.which("storescu", path=str(venv_bin)) is None:
        pytest.skip("pynetdicom's apps are not in the venv's bin/")
    system = tmp_path / "system"  # the system's folders on PATH, but for dcmtk's tools of those names
    system.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not folder or not Path(folder).is_dir() or Path(folder).resolve() == venv_bin.resolve():
            continue
        for entry in Path(folder).iterdir():
            if entry.name not in TOOLS and not (system / entry.name).exists():
                (system / entry.name).symlink_to(entry)
    path = os.pathsep.join([str(venv_bin), str(system)])
    assert dcmtk_tool("storescu", path) is None and shutil.which("storescu", path=path) is not None
    done = _pytest(tmp_path, path, "tests/serve/test_dcmtk_path.py::test_the_serve_tests_run_dcmtk_with_the_venv_first_on_path",
                   "tests/docs/test_listen_block.py::test_the_listen_block_segments_the_series[dcmtk]",
                   "tests/serve/test_dicom_node.py::test_echo_succeeds",
                   "tests/serve/test_audit_log.py::test_listen_audit_lines_per_association_and_series",
                   "tests/serve/test_listen_malloc_arenas.py::test_listen_keeps_two_arenas_under_concurrent_associations",
                   "tests/serve/test_volume_filters_reach_every_entry.py::test_the_dicom_node_applies_the_3d_filter",
                   "tests/serve/test_undeclared_writes.py::test_listen_writes_nothing_outside_its_out_folder_and_the_cache")
    outcomes = _outcomes(tmp_path)
    assert len(outcomes) == 7 and all(o.startswith("skipped: ") for o in outcomes.values()), (outcomes, done.stdout[-3000:])
    assert all("dcmtk" in o for o in outcomes.values()), outcomes


def test_the_serve_tests_leave_path_as_they_found_it(tmp_path):
    """A test worker runs other packages' tests after the serve tests: PATH is dcmtk first only
    while those run, the venv's bin/ first again (as set) in the next test of another folder."""
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join([str(venv_bin), os.environ["PATH"]])
    if dcmtk_tool("storescu", path) is None or dcmtk_first(path) == path:
        pytest.skip("needs dcmtk's storescu, and pynetdicom's in the venv's bin/")
    probe = tmp_path / "probe" / "test_path_probe.py"
    probe.parent.mkdir()
    probe.write_text("import os\n\ndef test_path_is_as_set():\n    assert os.environ['PATH'] == os.environ['SET_PATH']\n")
    done = _pytest(tmp_path, path, "tests/serve/test_dcmtk_path.py::test_the_serve_tests_run_dcmtk_with_the_venv_first_on_path",
                   str(probe), env={"SET_PATH": path})
    assert _outcomes(tmp_path) == {"test_the_serve_tests_run_dcmtk_with_the_venv_first_on_path": "passed",
                                   "test_path_is_as_set": "passed"}, done.stdout[-3000:]
