"""The types of values read from edgeseg's TOML files (training recipes, sweep files, export
profiles), checked one way for all of them.

TOML has booleans, integers and floats; Python's ``bool`` is an ``int``, so a plain
``isinstance`` check reads ``calib_slices = true`` as 1 and ``window = [true, 200]`` as
``(1.0, 200.0)``. Here a boolean is never a number and a number never a boolean; an integer is
taken where a float is expected, as ``--lr 1`` is on the command line.
"""

from __future__ import annotations

from typing import Any

# How an error line names each type a file value may be expected to have.
TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "a table"}


def has_type(value: Any, types: tuple[type, ...]) -> bool:
    """Whether ``value`` read from a TOML file is one of ``types``: a boolean only where ``bool``
    is among them, an integer also where ``float`` is."""
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def expected(types: tuple[type, ...]) -> str:
    """``types`` as an error line names them: ``an integer``, ``a string or a table``."""
    return " or ".join(TYPE_NAMES.get(t, t.__name__) for t in types)


def is_number_list(value: Any, count: int | None = None) -> bool:
    """Whether ``value`` is a list of numbers (integers or floats, no booleans), of ``count``
    items where given (any number but none otherwise)."""
    if not isinstance(value, (list, tuple)) or not all(has_type(v, (float,)) for v in value):
        return False
    return len(value) == count if count is not None else len(value) > 0
