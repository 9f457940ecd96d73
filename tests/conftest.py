"""Shared test set-up: nothing a test run writes may land in the working tree."""

import os
import subprocess
import sys
import tempfile
import textwrap

import pytest

# hypothesis keeps an example database and a constants cache in ./.hypothesis by default.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="edgeseg-hypothesis-"))


def check_one_line_error(proc, fragment: str) -> None:
    """A finished `edgeseg` process failed with exit 2 and exactly one stderr line
    `edgeseg: error: ...` containing ``fragment``, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeseg: error:"), proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture
def assert_one_line_error():
    """The one-line error check for CLI tests (see check_one_line_error)."""
    return check_one_line_error


def blocker(absent: tuple[str, ...]) -> str:
    """A sitecustomize that makes the top-level packages ``absent`` fail to import."""
    return textwrap.dedent(f"""
        import sys

        class _Absent:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {absent!r}:
                    raise ImportError(name + " is not installed here")

        sys.meta_path.insert(0, _Absent())
    """)


def run_without(args: list[str], tmp_path, absent: tuple[str, ...] = ("torch",)) -> subprocess.CompletedProcess:
    """Run Python with ``args`` in a process where the ``absent`` packages cannot be imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(blocker(absent))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *sys.path]),
               EDGESEG_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env)


@pytest.fixture
def python_without():
    """``run_without``: run Python where the named packages (default torch) cannot be imported."""
    return run_without
