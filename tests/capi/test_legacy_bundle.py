"""libedgeseg opens the bundle written by commit c155593 (2026-11-25, kept in tests/data/legacy,
see tests/export/test_legacy_bundle.py) and gives the labels that commit's Python runtime gave on
OpenVINO for the same int16 HU: a deployed C program keeps its masks across the upgrade."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

LEGACY = Path(__file__).parents[1] / "data" / "legacy"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_libedgeseg_gives_the_old_bundle_s_old_labels(precision, programs, run_raw, tmp_path):
    hu = np.load(LEGACY / "phantom-hu-6x40x28.npy")
    assert hu.dtype == np.int16
    expected = np.load(LEGACY / f"labels-2026-11-25-openvino-{precision}.npy")
    got = run_raw(programs["c"], LEGACY / "bundle-2026-11-25", precision, hu, tmp_path)
    assert np.count_nonzero(expected) > 300
    assert int(np.count_nonzero(got != expected)) == 0
