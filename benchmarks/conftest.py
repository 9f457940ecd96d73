"""Collect bench_*.py here (pytest's default pattern only collects test_*.py)."""

from __future__ import annotations

import pytest


def pytest_collect_file(parent, file_path):
    # A file named on the command line is collected by pytest itself whatever its name: a
    # second Module here would run each of its benchmarks twice and list every row twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
