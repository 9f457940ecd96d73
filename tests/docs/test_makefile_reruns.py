"""`make demo` and `make demo-chest` run again over their own outputs (a user's second try): the
commands that refuse to replace a finished output unless asked must be asked there."""

from __future__ import annotations

import re
from pathlib import Path

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"
# command: the flag that lets it replace what an earlier run of the target wrote
REPLACING = {"train": "--overwrite", "export": "--overwrite", "triton": "--overwrite"}


def _recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{re.escape(target)}:", line))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_demo_targets_replace_their_own_outputs():
    for target in ("demo", "demo-chest"):
        commands = [line for line in _recipe(target) if line.startswith("$(EDGESEG) ")]
        assert commands, target
        for line in commands:
            command = line.split()[1]
            if command in REPLACING:
                assert REPLACING[command] in line.split(), (target, line)
