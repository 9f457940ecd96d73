"""Case-level train / val / test splits, deterministic for a seed and stored as JSON.

Splits are made on case ids, never on slices: neighbouring slices of one patient are nearly
identical, so a slice-level split leaks the test set into training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgeseg.atomic import atomic_write_text
from edgeseg.errors import DataError

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def _validate_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3:
        raise DataError(f"fractions must be (train, val, test), got {tuple(fractions)}")
    if not all(math.isfinite(f) and f >= 0 for f in values):
        raise DataError(f"fractions must be finite and >= 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise DataError(f"fractions must sum to 1, got {values} (sum {sum(values):.6g})")
    return values  # type: ignore[return-value]


def _split_sizes(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Largest-remainder rounding of n x fractions, then every split with a positive fraction
    gets at least one case, taken from the largest split that can spare one (val first)."""
    exact = [f * n for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    for i in (1, 2, 0):
        if fractions[i] > 0 and sizes[i] == 0:
            donor = max(range(3), key=lambda j: (sizes[j], -j))
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1
    return sizes


def split_cases(
    case_ids: Iterable[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split case ids into {"train", "val", "test"} lists, deterministically for ``seed``.

    Ids are de-duplicated and sorted before a seeded permutation, so the split depends only
    on the set of ids, the fractions and the seed. With three or more cases every split whose
    fraction is positive gets at least one case; two cases give one train and one val case
    (empty test). Each returned list is sorted.
    """
    fractions = _validate_fractions(fractions)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"split seed must be a non-negative integer, got {seed!r}")
    ids = sorted({str(case_id) for case_id in case_ids})
    if len(ids) < 2:
        raise DataError(f"splitting needs at least 2 cases, got {len(ids)}: {ids}")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    n_train, n_val, _ = _split_sizes(len(ids), fractions)
    parts = (shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:])
    return {name: sorted(part) for name, part in zip(SPLIT_NAMES, parts)}


def _check_split(split: dict, where: str) -> dict[str, list[str]]:
    missing = [name for name in SPLIT_NAMES if name not in split]
    if missing:
        raise DataError(f"{where}: split lacks {', '.join(missing)}")
    result = {}
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        ids = split[name]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{where}: split {name!r} must be a list of case ids, got {ids!r}")
        for case_id in ids:
            if case_id in seen:
                raise DataError(f"{where}: case {case_id!r} is in both {seen[case_id]!r} and {name!r}")
            seen[case_id] = name
        result[name] = list(ids)
    return result


def write_split(
    path: str | os.PathLike,
    split: dict[str, list[str]],
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> None:
    """Write a split (with the seed and fractions that made it) to a JSON file, atomically."""
    checked = _check_split(split, f"split for {path}")
    record = {"seed": int(seed), "fractions": list(_validate_fractions(fractions)), **checked}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def read_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split written by :func:`write_split`: {"train", "val", "test"} lists of case ids."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"split file not found: {path}") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from exc
    if not isinstance(record, dict):
        raise DataError(f"split file {path} must hold a JSON object, got {type(record).__name__}")
    return _check_split(record, str(path))
