"""Recipes: named, versioned training defaults shipped as TOML files in ``edgeseg/recipes/``.

A recipe fixes what a task needs (window, size, fit, labels, loss, class weights,
augmentation, epochs, ...) so that ``edgeseg train --recipe covid-infection --data ...`` is a
reproducible starting point; flags given on the command line override it. The recipe's name,
version, content hash and values are recorded in the checkpoint and carried into the bundle.

File format (every key but ``name`` and ``version`` optional)::

    name = "covid-infection"
    version = 1
    description = "..."
    [train]
    window = [-1250, 250]
    labels = { ggo = [1], consolidation = [2] }
    loss = "dice-ce"
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from edgeseg.choices import canonical_choice
from edgeseg.errors import EdgesegError
from edgeseg.file_values import expected, has_type, is_number_list
from edgeseg.train.config import CHOICES, parse_labels

# The named recipes are package data (edgeseg/recipes/*.toml), so an installed wheel finds them
# as a checkout does.
RECIPE_FOLDER = "recipes"
# Training keys a recipe may set, with the type each must have in TOML.
RECIPE_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,), "base": (int,), "depth": (int,), "size": (int,), "window": (list,),
    "interpolation": (str,), "fit": (str,), "labels": (dict, str), "intensity": (str,), "mask": (str,),
    "case_pattern": (str,), "loss": (str,), "class_weights": (list,), "focal_gamma": (float,),
    "tversky": (list,), "regions": (list,), "augment": (bool,), "augment_p": (float,), "epochs": (int,),
    "batch_size": (int,), "lr": (float,), "weight_decay": (float,), "warmup_epochs": (float,),
    "ema_epochs": (float,), "seed": (int,),
}
TOP_KEYS = {"name", "version", "description", "train"}


@dataclass(frozen=True)
class Recipe:
    """A parsed recipe: ``values`` are TrainConfig field values (labels as a dict)."""

    name: str
    version: int
    sha256: str
    path: str
    values: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def record(self) -> dict[str, Any]:
        """What checkpoints and bundles keep of the recipe: plain data only."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "values": dict(self.values)}


def recipe_dir() -> Path:
    """The folder of the named recipes shipped in the package (``edgeseg/recipes/``)."""
    return Path(str(resources.files("edgeseg").joinpath(RECIPE_FOLDER)))


def recipe_names() -> list[str]:
    """The names ``--recipe`` accepts besides a file path, sorted (``covid-infection``, ...)."""
    folder = recipe_dir()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def recipe_path(name_or_path: str) -> Path:
    """An existing file path as given, else the shipped recipe ``NAME``; refuses an unknown name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = recipe_names()
    if name_or_path in known:
        return recipe_dir() / f"{name_or_path}.toml"
    raise EdgesegError(f"recipe {name_or_path!r} is neither a file nor a known recipe "
                       f"({', '.join(known) or 'none found in ' + str(recipe_dir())})")


def load_recipe(name_or_path: str) -> Recipe:
    """Read and check a recipe file; a file that does not parse or names an unknown key is refused."""
    path = recipe_path(name_or_path)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgesegError(f"recipe {path} does not parse as TOML: {' '.join(str(exc).split())}") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise EdgesegError(f"recipe {path} has unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not name:
        raise EdgesegError(f"recipe {path} needs a name = \"...\" string")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EdgesegError(f"recipe {path} needs an integer version >= 1, got {version!r}")
    train = data.get("train", {})
    if not isinstance(train, dict):
        raise EdgesegError(f"recipe {path}: [train] must be a table")
    return Recipe(name=name, version=version, sha256=hashlib.sha256(raw).hexdigest(), path=str(path),
                  values=_check_values(train, path), description=str(data.get("description", "")))


def _check_values(train: dict[str, Any], path: Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in train.items():
        if key not in RECIPE_KEYS:
            raise EdgesegError(f"recipe {path} has unknown key {key!r} in [train] (known: {', '.join(sorted(RECIPE_KEYS))})")
        types = RECIPE_KEYS[key]
        if not has_type(value, types):
            raise EdgesegError(f"recipe {path}: {key} = {value!r} has the wrong type (expected {expected(types)})")
        values[key] = _normalise(key, value, path)
    return values


def _normalise(key: str, value: Any, path: Path) -> Any:
    # the recorded values spell a choice one way (the hash stays that of the file's bytes)
    if key in CHOICES:
        return canonical_choice(value, CHOICES[key])
    if key == "labels":
        if isinstance(value, str):
            return parse_labels(value)
        for name, vals in value.items():
            if not all(type(v) is int for v in (vals if isinstance(vals, list) else [vals])):
                raise EdgesegError(f"recipe {path}: labels {name} must be a label value or a list of them, e.g. "
                                   f"{name} = [1, 2], got {vals!r}")
        text = ",".join(f"{name}={'+'.join(str(v) for v in (vals if isinstance(vals, list) else [vals]))}"
                        for name, vals in value.items())
        return parse_labels(text)
    if key in ("window", "tversky"):
        if not is_number_list(value, count=2):
            raise EdgesegError(f"recipe {path}: {key} must be two numbers, got {value!r}")
        return [float(v) for v in value]
    if key == "regions":  # checked against the classes with the rest of the config
        if not all(isinstance(r, list) and all(type(c) is int for c in r) for r in value):
            raise EdgesegError(f"recipe {path}: regions must be a list of lists of class numbers, e.g. [[1, 2], [2]], "
                               f"got {value!r}")
        return [list(r) for r in value]
    if key == "class_weights":
        if not is_number_list(value):
            raise EdgesegError(f"recipe {path}: class_weights must be a list of numbers, got {value!r}")
        return [float(v) for v in value]
    return value
