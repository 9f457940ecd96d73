"""A runner imports its library through the extra its class declares."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_runner_imports_its_library_through_the_extra_it_declares():
    # one source of truth: a runner that called require() with an extra of its own could name
    # another install command than the `extra` its class declares (and `edgeseg gate` reports)
    calls = []
    for path in sorted((ROOT / "edgeseg" / "runtime" / "runners").glob("*.py")):
        if path.name == "base.py":  # where Runner.import_library calls it with the class's extra
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require":
                calls.append(f"{path.name}:{node.lineno}")
    assert not calls, f"runners import their library with Runner.import_library: {calls}"
