"""The label names a dataset folder's ``dataset.json`` gives its label values (MSD, nnU-Net).

They are only a hint: edgeseg maps label values to classes with ``--labels`` or the values a
checkpoint recorded, never by name. The names let ``evaluate`` notice a checkpoint scored on
data of another task (a chest model on abdominal labels), whose Dice would mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

# A dataset.json is a few kilobytes; a bigger one is not read for a hint.
MAX_DATASET_JSON_BYTES = 16 * 1024 * 1024


def dataset_label_names(data) -> dict[int, str]:
    """``{label value: name}`` from ``data/dataset.json``, or ``{}`` where there is none.

    Takes MSD's form (``{"0": "background", "1": "liver"}``) and nnU-Net v2's
    (``{"background": 0, "liver": 1}``, a region as a list of values). A missing, unreadable
    or unrecognised file gives ``{}``: the names only decide whether a warning is shown.
    """
    path = Path(str(data)) / "dataset.json"
    try:
        if not path.is_file() or path.stat().st_size > MAX_DATASET_JSON_BYTES:
            return {}
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(labels, dict):
        return {}
    names: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, str) and str(key).strip().isdigit():
            names[int(key)] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            names[value] = str(key)
        elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            names.update({v: str(key) for v in value})
    return names


def unnamed_classes(class_values: dict[str, list[int]], names: dict[int, str]) -> list[str]:
    """Descriptions of the classes whose source values the dataset names, none of them by the
    class's own name (case and ``_``/``-``/space ignored): ``"ggo (value 1 is 'liver')"``."""
    def norm(text: str) -> str:
        return "".join(ch for ch in text.lower() if ch.isalnum())

    found = []
    for cls, values in class_values.items():
        named = {v: names[v] for v in values if v in names}
        if named and norm(cls) not in {norm(n) for n in named.values()}:
            shown = ", ".join(f"value {v} is {n!r}" for v, n in sorted(named.items()))
            found.append(f"{cls} ({shown})")
    return found
