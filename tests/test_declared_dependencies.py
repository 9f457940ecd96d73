"""What edgeseg imports is what pyproject.toml declares.

Every third-party package a module imports (an ``import`` statement anywhere in it, or an
optional library loaded by ``edgeseg.errors.require``) is a dependency of the base install or of
an extra; ``require`` names an extra that installs it (an install that follows the error message
gets the package), and never ``dev``, which is the test tooling, not something a user installs.
``requires-python`` admits no Python whose standard library lacks a module edgeseg imports.
Read from the source with ``ast``, so the answer does not depend on what this environment has.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from edgeseg.errors import distribution_of

ROOT = Path(__file__).resolve().parents[1]
# Provided by the process that loads the module, not installable from an index: Triton's Python
# backend gives its models triton_python_backend_utils.
PROVIDED = {"triton_python_backend_utils"}
# Standard-library modules newer than some Python 3 still in use, with the version that added them.
STDLIB_SINCE = {"tomllib": (3, 11)}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``tritonclient[grpc]>=2`` -> ``tritonclient``)."""
    return _normal(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extras() -> dict[str, set[str]]:
    """Each extra's distributions, with the extras it includes (``edgeseg[io]``) resolved."""
    raw = _project()["optional-dependencies"]

    def closure(extra: str, seen: frozenset = frozenset()) -> set[str]:
        names = set()
        for requirement in raw[extra]:
            own = re.fullmatch(r"edgeseg\[([a-z0-9,-]+)\]", requirement)
            if own:
                for inner in own.group(1).split(","):
                    assert inner not in seen, f"extra {extra} includes itself through {inner}"
                    names |= closure(inner, seen | {extra})
            else:
                names.add(_name(requirement))
        return names

    return {extra: closure(extra) for extra in raw}


def _imports() -> list[tuple[str, int, str, str | None]]:
    """(file, line, module, extra) for every absolute import and every ``require(module, extra, ...)``
    call in edgeseg/; extra is None for an import statement."""
    found = []
    for path in sorted((ROOT / "edgeseg").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                found += [(rel, node.lineno, alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((rel, node.lineno, node.module, None))
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require"
                  and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                found.append((rel, node.lineno, node.args[0].value, node.args[1].value))
    return found


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top != "edgeseg" and top not in sys.stdlib_module_names and top not in PROVIDED


def test_the_scan_sees_imports_and_requires():
    found = _imports()
    assert ("edgeseg/serve/app.py", "fastapi", "serve") in {(f, m, e) for f, _, m, e in found}
    assert any(m == "numpy" and e is None for _, _, m, e in found)


def test_every_imported_package_is_declared():
    base = {_name(r) for r in _project()["dependencies"]}
    extras = _extras()
    declared = base.union(*extras.values())
    undeclared = sorted({f"{f}:{line} {m} ({distribution_of(m)})" for f, line, m, _ in _imports()
                         if _third_party(m) and _normal(distribution_of(m)) not in declared})
    assert not undeclared, "imported but in no dependency list of pyproject.toml:\n" + "\n".join(undeclared)


def test_require_names_an_extra_that_installs_the_package():
    extras = _extras()
    base = {_name(r) for r in _project()["dependencies"]}
    wrong = []
    for f, line, module, extra in _imports():
        if extra is None:
            continue
        if extra == "dev" or extra not in extras:
            wrong.append(f"{f}:{line} require({module!r}, {extra!r}): not an extra a user installs")
        elif _normal(distribution_of(module)) not in extras[extra] | base:
            wrong.append(f"{f}:{line} require({module!r}, {extra!r}): edgeseg[{extra}] does not install "
                         f"{distribution_of(module)}")
    assert not wrong, "\n".join(wrong)


def test_requires_python_admits_no_python_without_an_imported_stdlib_module():
    spec = _project()["requires-python"]
    floor = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", spec).groups())
    needed = {STDLIB_SINCE[m.split(".")[0]]: m for _, _, m, _ in _imports() if m.split(".")[0] in STDLIB_SINCE}
    assert needed, "the scan found no tomllib import; update STDLIB_SINCE"
    assert floor >= max(needed), f"requires-python {spec} admits a Python without {needed[max(needed)]}"
    assert f"Programming Language :: Python :: {floor[0]}.{floor[1]}" in _project()["classifiers"]


# Packages whose non-public internals a module uses, and that module: a new major version may
# change them, so the declared requirement must stop below it.
INTERNALS = {"uvicorn": "edgeseg/serve/header_deadline.py"}


def test_packages_used_through_their_internals_have_an_upper_bound():
    requirements = [r for extra in _project()["optional-dependencies"].values() for r in extra]
    requirements += _project()["dependencies"]
    for package, user in INTERNALS.items():
        assert package in (ROOT / user).read_text()
        declared = [r for r in requirements if _name(r) == package]
        assert declared and all("<" in r for r in declared), f"{package} ({user} uses its internals): {declared}"
