"""The sweep files the docs point to load as written: a sweep file that no longer parses after a
config change would otherwise be found only by a user hours into a run."""

from pathlib import Path

import pytest

from edgeseg.sweep.config import load_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "docs" / "sweeps"


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.toml")), ids=lambda p: p.name)
def test_every_sweep_file_loads(path):
    sweep = load_sweep(path)
    assert sweep.points, path
    if sweep.choose:
        assert sweep.choose["reference"] in {p.id for p in sweep.points}
