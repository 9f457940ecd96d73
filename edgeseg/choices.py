"""Choice values (a fit, a loss, a calibration method) spelled as the command line takes them.

The command line's choice options ignore case (``--fit PAD`` is ``pad``); the files that set the
same values (training recipes, sweep files, export profiles) take them alike through
:func:`canonical_choice`, so a value is recorded in checkpoints, bundles and sweep folders in one
spelling whichever way it was typed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def canonical_choice(value: Any, choices: Iterable[str]) -> Any:
    """The one of ``choices`` that ``value`` names ignoring case (as click's ``Choice`` with
    ``case_sensitive=False`` compares them), else ``value`` unchanged, for the caller's own check
    to refuse with its message."""
    if not isinstance(value, str):
        return value
    folded = value.casefold()
    return next((choice for choice in choices if choice.casefold() == folded), value)


def canonical_choices(values: dict[str, Any], choices: dict[str, Iterable[str]]) -> dict[str, Any]:
    """``values`` with each key that ``choices`` names spelled as one of its choices (see
    :func:`canonical_choice`); other keys as they are."""
    return {key: canonical_choice(value, choices[key]) if key in choices else value for key, value in values.items()}
