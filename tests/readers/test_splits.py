"""Case-level splits: a partition of the cases, reproducible, never splitting a case."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseg.data import read_split, split_cases, write_split
from edgeseg.errors import DataError

CASES = [f"case_{k:03d}" for k in range(10)]


def _assert_partition(split, ids):
    parts = [set(split[name]) for name in ("train", "val", "test")]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    assert parts[0] | parts[1] | parts[2] == set(ids)


def test_ten_cases_make_seven_two_one():
    split = split_cases(CASES, seed=0)
    _assert_partition(split, CASES)
    assert [len(split[name]) for name in ("train", "val", "test")] == [7, 2, 1]


def test_deterministic_and_seed_dependent():
    assert split_cases(CASES, seed=5) == split_cases(list(reversed(CASES)), seed=5)
    assert any(split_cases(CASES, seed=s) != split_cases(CASES, seed=0) for s in range(1, 5))


def test_slice_level_ids_are_collapsed_to_cases():
    per_slice = [case for case in CASES for _ in range(4)]
    assert split_cases(per_slice, seed=1) == split_cases(CASES, seed=1)


def test_small_case_counts():
    three = split_cases(["a", "b", "c"])
    assert all(len(three[name]) == 1 for name in ("train", "val", "test"))
    two = split_cases(["a", "b"])
    assert (len(two["train"]), len(two["val"]), two["test"]) == (1, 1, [])
    with pytest.raises(DataError, match="at least 2 cases"):
        split_cases(["a"])


@pytest.mark.parametrize(
    ("fractions", "message"),
    [((0.5, 0.5, 0.5), "sum to 1"), ((1.2, -0.1, -0.1), ">= 0"), ((0.5, 0.5), r"\(train, val, test\)")],
)
def test_bad_fractions(fractions, message):
    with pytest.raises(DataError, match=message):
        split_cases(CASES, fractions=fractions)


@settings(max_examples=60, deadline=None, database=None)  # write nothing outside tmp_path
@given(
    ids=st.lists(st.text(min_size=1, max_size=8), min_size=3, max_size=40, unique=True),
    seed=st.integers(0, 2**31),
    train=st.floats(0.1, 0.9),
)
def test_any_case_list_is_partitioned(ids, seed, train):
    rest = (1 - train) / 2
    split = split_cases(ids, fractions=(train, rest, rest), seed=seed)
    _assert_partition(split, ids)
    assert all(split[name] for name in ("train", "val", "test"))
    shuffled = ids[:]
    random.Random(seed).shuffle(shuffled)
    assert split_cases(shuffled, fractions=(train, rest, rest), seed=seed) == split


def test_write_and_read_back(tmp_path):
    split = split_cases(CASES, seed=3)
    write_split(tmp_path / "split.json", split, seed=3, fractions=(0.7, 0.15, 0.15))
    assert read_split(tmp_path / "split.json") == split
    record = json.loads((tmp_path / "split.json").read_text())
    assert record["seed"] == 3 and record["fractions"] == [0.7, 0.15, 0.15]


def test_read_refuses_missing_or_overlapping(tmp_path):
    with pytest.raises(DataError, match="split file not found"):
        read_split(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}))
    with pytest.raises(DataError, match="'b' is in both 'train' and 'val'"):
        read_split(tmp_path / "bad.json")
