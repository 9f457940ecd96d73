"""Runtime test fixtures: the exported test bundle (tests/conftest.py), and a private backend-probe cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bundle_dir(exported_bundle) -> Path:
    """A read-only-by-convention bundle; tests that damage a bundle copy it first."""
    return exported_bundle


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the bundle that a test may tamper with."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def _probe_cache(tmp_path, monkeypatch):
    """Keep the backend probe cache out of the user's home."""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def cpu_only():
    """For tests of what auto picks among the CPU runners: skipped where onnxruntime has a GPU
    provider library, since auto then asks ONNX Runtime for its GPU runner first."""
    from edgeseg.runtime.runners.onnxruntime import gpu_provider_library_installed

    if gpu_provider_library_installed():
        pytest.skip("onnxruntime here has a GPU provider library: auto asks ONNX Runtime for its GPU runner")
