"""k-fold cross-validation splits by case, deterministic for a seed.

With a few dozen labelled cases there is no room for a separate test set, so every case is
tested once: the cases are shuffled with the seed and dealt into ``folds`` groups whose sizes
differ by at most one. Fold K tests on group K and trains on the others.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from edgeseg.errors import DataError


def fold_groups(case_ids: Iterable[str], folds: int, seed: int = 0) -> list[list[str]]:
    """The ``folds`` groups of case ids (each sorted), from a seeded shuffle of the sorted ids.

    The groups depend only on the set of ids, ``folds`` and ``seed``; every case lands in
    exactly one group and group sizes differ by at most one.
    """
    ids = sorted({str(case_id) for case_id in case_ids})
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {folds!r}")
    if len(ids) < folds:
        raise DataError(f"{folds} folds need at least {folds} cases, got {len(ids)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"fold seed must be a non-negative integer, got {seed!r}")
    order = np.random.default_rng(seed).permutation(len(ids))
    return [sorted(ids[i] for i in order[k::folds]) for k in range(folds)]


def fold_split(case_ids: Iterable[str], folds: int, fold: int, seed: int = 0) -> dict[str, list[str]]:
    """The split of fold ``fold`` (0-based): {"train": other groups, "val": group K, "test": group K}.

    Validation during training runs on the held-out group so its curve is the fold's test
    curve; the cross-validation figures are taken from the last epoch's weights, so nothing is
    selected on the held-out cases.
    """
    groups = fold_groups(case_ids, folds, seed)
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < folds:
        raise DataError(f"fold must be in 0..{folds - 1}, got {fold!r}")
    held_out = groups[fold]
    train = sorted(case for k, group in enumerate(groups) if k != fold for case in group)
    return {"train": train, "val": list(held_out), "test": list(held_out)}
