"""libedgeseg opens the bundle written by commit c155593 (2026-11-25, kept in tests/data/legacy,
see tests/export/test_legacy_bundle.py) and gives the labels that commit's Python runtime gave on
OpenVINO for the same int16 HU: a deployed C program keeps its masks across the upgrade (on an
x86 CPU without VNNI, INT8 within the bound tests/legacy_labels.py states, as the Python runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.legacy_labels import BUNDLE, HU, assert_old_labels


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_libedgeseg_gives_the_old_bundle_s_old_labels(precision, programs, run_raw, tmp_path):
    hu = np.load(HU)
    assert hu.dtype == np.int16
    got = run_raw(programs["c"], BUNDLE, precision, hu, tmp_path)
    assert_old_labels(got, f"openvino:{precision}")
