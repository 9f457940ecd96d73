"""Every registered architecture has its row in docs/training.md's table of architectures."""

from __future__ import annotations

import re
from pathlib import Path

from edgeseg.models.registry import MODELS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_registered_architecture_has_a_row():
    section = (DOCS / "training.md").read_text().split("## Architectures\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)`", section, flags=re.M)
    assert sorted(rows) == sorted(MODELS)
