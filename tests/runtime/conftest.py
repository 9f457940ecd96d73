"""Runtime test fixtures: one small real bundle per session, and a private backend-probe cache.

The bundle comes from ``bundle_factory.make_bundle`` (a U-Net of base 8, depth 2, 64x64 input,
trained for a few steps on phantom slices, exported with torch.onnx, INT8 by ONNX Runtime
static quantisation, plus a TorchScript trace).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

_FACTORY = Path(__file__).with_name("bundle_factory.py")


def _factory():
    spec = importlib.util.spec_from_file_location("edgeseg_test_bundle_factory", _FACTORY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bundle_factory = _factory()


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """A read-only-by-convention bundle; tests that damage a bundle copy it first."""
    pytest.importorskip("torch")
    return bundle_factory.make_bundle(tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path) -> Path:
    """A private copy of the bundle that a test may tamper with."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def _probe_cache(tmp_path, monkeypatch):
    """Keep the backend probe cache out of the user's home."""
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
