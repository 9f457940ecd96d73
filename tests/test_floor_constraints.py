"""constraints/floor.txt holds exactly the lower bounds pyproject.toml declares.

``make test-floor`` installs that file (every floor at once) and runs the tests of the libraries
it pins; the file is only worth that while it says what pyproject.toml says. Each ``name>=X`` of
the base install and of every extra a site installs (not ``dev``, the test tooling, nor
``tensorrt``, which needs an NVIDIA GPU) is one line ``name==X`` of the file, and the file has
no other line: raising a floor in one place and not the other fails here. ``~=X`` is a floor of
``X`` too. A requirement there with no floor at all (bare, or only ``>``, ``<``, ``!=``) is not
tested at its lowest version by ``make test-floor``: it fails here unless NO_FLOOR says why.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "constraints" / "floor.txt"
# extras whose floors the constraints file leaves out, and why (docs/runtime.md says the same)
LEFT_OUT = {"dev": "test tooling, not a user's install", "tensorrt": "needs an NVIDIA GPU"}
# requirements of the extras tested that have no floor, and why
NO_FLOOR = {"edgeseg": "the package's own extras (edgeseg[io])",
            "torch": "pinned (==): any other version resolves to a multi-GB CUDA build"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version: str) -> tuple[int, ...]:
    """``2.40`` and ``2.40.0`` are one release (PEP 440 pads with zeros)."""
    parts = [int(part) for part in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _requirements(project: dict) -> list[str]:
    """The base install's requirements and those of each extra not LEFT_OUT."""
    requirements = list(project["dependencies"])
    for extra, listed in project["optional-dependencies"].items():
        if extra not in LEFT_OUT:
            requirements += listed
    return requirements


def _name(requirement: str) -> str:
    return _normal(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def _floor(requirement: str) -> str | None:
    """The version after ``>=`` or ``~=`` (``~=1.4`` is ``>=1.4,<2``), None when there is none."""
    floor = re.search(r"(?:>=|~=)\s*([0-9][0-9.]*)", requirement.split(";", 1)[0])
    return floor.group(1) if floor else None


def unfloored(project: dict) -> list[str]:
    """Each requirement of the extras tested with no floor that NO_FLOOR does not explain."""
    return [requirement for requirement in _requirements(project)
            if _floor(requirement) is None and _name(requirement) not in NO_FLOOR]


def declared_floors(project: dict) -> dict[str, str]:
    """name -> the floor (``>=`` or ``~=``) of each requirement of ``project`` that has one; a
    name whose floors differ between the base install and an extra is an error in itself."""
    floors: dict[str, str] = {}
    for requirement in _requirements(project):
        name, floor = _name(requirement), _floor(requirement)
        if name in NO_FLOOR or floor is None:
            continue
        assert _release(floors.setdefault(name, floor)) == _release(floor), \
            f"{name} has two floors in pyproject.toml: {floors[name]} and {floor}"
    return floors


def pinned(text: str) -> dict[str, str]:
    """name -> version of each ``name==version`` line (comments and blank lines aside); any other
    kind of line is an error: the file holds floors and nothing else."""
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        found = re.fullmatch(r"([A-Za-z0-9._-]+)==([0-9][0-9.]*)", line)
        assert found, f"constraints/floor.txt:{number}: {line!r} is not name==version"
        name = _normal(found.group(1))
        assert name not in pins, f"constraints/floor.txt:{number}: {name} pinned twice"
        pins[name] = found.group(2)
    return pins


def disagreements(floors: dict[str, str], pins: dict[str, str]) -> list[str]:
    found = [f"{name}>={floors[name]} in pyproject.toml, not in constraints/floor.txt"
             for name in sorted(floors.keys() - pins.keys())]
    found += [f"{name}=={pins[name]} in constraints/floor.txt, no floor in pyproject.toml"
              for name in sorted(pins.keys() - floors.keys())]
    found += [f"{name}: >={floors[name]} in pyproject.toml, =={pins[name]} in constraints/floor.txt"
              for name in sorted(floors.keys() & pins.keys()) if _release(floors[name]) != _release(pins[name])]
    return found


def test_the_floor_constraints_are_the_declared_floors():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert disagreements(declared_floors(project), pinned(FLOOR.read_text())) == []


def test_every_requirement_tested_has_a_floor():
    assert unfloored(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]) == []


def test_a_requirement_without_a_floor_is_caught():
    """A bare requirement, one bounded only from above or by ``>``, in the base install or an
    extra tested, is reported; ``~=`` is a floor; the extras left out are not looked at."""
    project = {"dependencies": ["numpy>=1.24.2", "requests", "attrs~=23.1"],
               "optional-dependencies": {"serve": ["starlette", "h11>0.14", "anyio<5; python_version>='3.11'",
                                                   "edgeseg[io]", "torch==2.13.0"],
                                         "dev": ["pytest"], "tensorrt": ["cuda-python"]}}
    assert unfloored(project) == ["requests", "starlette", "h11>0.14", "anyio<5; python_version>='3.11'"]
    assert declared_floors(project) == {"numpy": "1.24.2", "attrs": "23.1"}


def test_a_floor_raised_in_one_place_only_is_caught():
    """The check itself: a pyproject.toml whose numpy floor was raised, a constraints file with a
    package more, and one with a package less are each told apart from the real pair."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = pinned(FLOOR.read_text())
    raised = dict(project, dependencies=[re.sub(r"^numpy>=[0-9.]+", "numpy>=9.0", requirement)
                                         for requirement in project["dependencies"]])
    assert disagreements(declared_floors(raised), pins) == \
        [f"numpy: >=9.0 in pyproject.toml, =={pins['numpy']} in constraints/floor.txt"]
    floors = declared_floors(project)
    assert disagreements(floors, dict(pins, requests="2.0")) == \
        ["requests==2.0 in constraints/floor.txt, no floor in pyproject.toml"]
    fewer = {name: version for name, version in pins.items() if name != "pydicom"}
    assert disagreements(floors, fewer) == [f"pydicom>={floors['pydicom']} in pyproject.toml, not in constraints/floor.txt"]
    assert _release("2.40") == _release("2.40.0") != _release("2.4")
