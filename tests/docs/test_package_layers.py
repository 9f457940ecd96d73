"""docs/index.md's line of package layers is the import-linter layers contract of pyproject.toml,
and the packages it says never import torch are those the forbidden contract names: a package
added to the code (`choices`, `file_values`) or to a contract must reach the guide as well."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return {contract["type"]: contract for contract in config}


def documented_layers(text: str) -> list[set[str]]:
    """Bottom to top, each layer the set of its sibling packages."""
    match = re.search(r"The packages form layers, bottom to top: (.*?); nothing imports upward", text, re.S)
    assert match, "docs/index.md has no line of package layers"
    return [set(re.findall(r"`(\w+)`", layer)) for layer in match.group(1).split("→")]


def contract_layers() -> list[set[str]]:
    layers = contracts()["layers"]["layers"]
    return [{name.strip().removeprefix("edgeseg.") for name in layer.split("|")} for layer in reversed(layers)]


def documented_torch_free(text: str, layers: list[set[str]]) -> set[str]:
    """'Every layer below `A`, and `B`, `C` ..., never imports torch'."""
    match = re.search(r"Every layer below `(\w+)`, and (.*?), never imports?\s+torch", text, re.S)
    assert match, "docs/index.md does not say which packages never import torch"
    top = next(i for i, layer in enumerate(layers) if match.group(1) in layer)
    return set().union(*layers[:top]) | set(re.findall(r"`(\w+)`", match.group(2)))


def test_the_documented_layers_are_the_contract():
    assert documented_layers((ROOT / "docs" / "index.md").read_text()) == contract_layers()


def test_the_documented_torch_free_packages_are_the_contract():
    text = (ROOT / "docs" / "index.md").read_text()
    forbidden = {name.removeprefix("edgeseg.") for name in contracts()["forbidden"]["source_modules"]}
    assert documented_torch_free(text, contract_layers()) == forbidden


def test_the_readers_take_the_line_apart():
    text = ("The packages form layers, bottom to top: `a` | `b` → `c` →\n`d` | `e` → `f`; nothing imports upward. "
            "Every layer below `d`, and `f`, never imports torch; ...")
    layers = documented_layers(text)
    assert layers == [{"a", "b"}, {"c"}, {"d", "e"}, {"f"}]
    assert documented_torch_free(text, layers) == {"a", "b", "c", "f"}
