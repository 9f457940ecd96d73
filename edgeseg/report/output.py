"""Report output: plain-text tables, JSON and CSV files, and PNG figures, all written atomically.

Metrics use nan for "undefined" (an HD95 with one empty mask); JSON has no nan, so writers
emit ``null`` for it (and for inf), CSV an empty cell, and tables a "-".
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from edgeseg.atomic import atomic_path, atomic_write_text
from edgeseg.errors import require


def to_json_compatible(obj):
    """Return ``obj`` with numpy scalars / arrays turned into Python values and nan / inf into None.

    Mappings become dicts with string keys, tuples and sets become lists, paths become strings.
    Raises TypeError for objects JSON cannot represent.
    """
    if isinstance(obj, np.ndarray):
        return to_json_compatible(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {_json_key(key): to_json_compatible(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_json_compatible(value) for value in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON: {obj!r}")


def _json_key(key) -> str:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, (str, int, float)):
        return str(key)
    raise TypeError(f"JSON object keys must be strings or numbers, got {type(key).__name__}: {key!r}")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically; nan / inf become ``null``."""
    text = json.dumps(to_json_compatible(obj), indent=2, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _csv_cell(value) -> str:
    value = to_json_compatible(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping], columns: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as CSV with a header of ``columns`` to ``path`` atomically.

    Missing keys and nan give empty cells; lists are written as JSON; floats at full precision.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    atomic_write_text(path, buffer.getvalue())


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def format_cell(value) -> str:
    """Text for one table cell: floats with four decimal places, nan / None as "-".

    Non-zero floats below 1e-3 or from 1e6 up (learning rates, parameter counts stored as
    floats) use four significant digits in exponent form instead, so they do not read as 0.
    """
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return "-"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e6):
            return f"{number:.4g}"
        return f"{number:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_cell(item) for item in value) + "]"
    return str(value)


def format_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """An aligned plain-text table of ``rows`` (dicts) under a header of ``columns``.

    Columns whose values are all numbers (or missing) are right-aligned, others left-aligned;
    cells are formatted by :func:`format_cell`. The result has no trailing newline.
    """
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    numeric = [
        all(_is_number(row.get(column)) or row.get(column) is None for row in rows) for column in columns
    ]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]

    def layout(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric)
        ]
        return "  ".join(parts).rstrip()

    lines = [layout(list(columns)), "  ".join("-" * width for width in widths)]
    lines += [layout(line) for line in cells]
    return "\n".join(lines)


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure with constrained layout, drawn by the Agg backend (no display).

    It does not go through pyplot, so it neither changes the process's backend nor stays in
    pyplot's registry of open figures.
    """
    require("matplotlib", "train", "plotting")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(path: str | os.PathLike, figure, dpi: int = 100) -> None:
    """Save ``figure`` as a PNG at ``path`` atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
