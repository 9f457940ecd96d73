"""Shared test set-up: nothing a test run writes may land in the working tree."""

import os
import tempfile

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
