"""k-fold splits by case: every case tested exactly once, seeded, balanced."""

import pytest

from edgeseg.data.folds import fold_groups, fold_split
from edgeseg.errors import DataError

IDS = [f"{i:03d}" for i in range(50)]


def test_folds_partition_the_cases_evenly_and_reproducibly():
    groups = fold_groups(IDS, 5, seed=3)
    assert sorted(c for g in groups for c in g) == IDS
    assert [len(g) for g in groups] == [10] * 5
    assert fold_groups(reversed(IDS), 5, seed=3) == groups
    assert fold_groups(IDS, 5, seed=4) != groups
    assert [len(g) for g in fold_groups(IDS[:12], 5)] == [3, 3, 2, 2, 2]


def test_each_fold_holds_out_its_group_and_trains_on_the_rest():
    groups = fold_groups(IDS, 5, seed=0)
    for k in range(5):
        split = fold_split(IDS, 5, k, seed=0)
        assert split["test"] == split["val"] == groups[k]
        assert not set(split["train"]) & set(groups[k])
        assert len(split["train"]) + len(groups[k]) == 50


@pytest.mark.parametrize("folds, fold, message", [(1, 0, "at least 2 folds"), (5, 5, "fold must be in 0..4"),
                                                   (60, 0, "need at least 60 cases")])
def test_bad_fold_settings(folds, fold, message):
    with pytest.raises(DataError, match=message):
        fold_split(IDS, folds, fold)
