"""Paths of the real CT samples in tests/data, shared by the reader tests."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def msd_slices() -> Path:
    return DATA / "msd_liver_slices"


@pytest.fixture
def dcmqi() -> Path:
    return DATA / "dcmqi_ct_liver"


@pytest.fixture
def totalseg() -> Path:
    return DATA / "totalseg_example_ct"
