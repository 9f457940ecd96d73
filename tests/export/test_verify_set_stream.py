"""The gate's held-out slices are drawn reading one case at a time: the same slices as when every
case was held at once (so gates and their parity.json stay as they were), and a peak that does
not grow with the number of cases. Peaks are measured with tracemalloc, which sees numpy's
allocations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgeseg.data import open_dataset
from edgeseg.data.open import recorded_slice_options
from edgeseg.data.slice_set import SliceSet, check_window, preprocess_stack
from edgeseg.export.int8 import classes_present, stratify_slices
from edgeseg.export.verify import load_verify_set
from edgeseg.spec import PreprocessSpec

SPEC = PreprocessSpec(window=(-1000.0, 200.0), size=(64, 64))
LIVER = {"class_names": ["background", "liver"],
         "train_config": {"data": "phantom:cases=5,size=96,slices=12,seed=3"},
         "split": {"val": ["case_001", "case_003", "case_004"]}}
CHEST = {"class_names": ["background", "ggo", "consolidation"], "label_values": {"ggo": [1], "consolidation": [2]}}


def _all_at_once(payload: dict, spec: PreprocessSpec, data: str | None, count: int):
    """The selection as it was made with every case in memory (images, truth, cases, slice cases, numbers)."""
    train_config = payload.get("train_config") or {}
    if data is None:
        data = train_config["data"]
        volumes = [v for v in open_dataset(data, **recorded_slice_options(train_config))
                   if v.case_id in set(payload["split"]["val"])]
    else:
        volumes = open_dataset(data)
    label_values = payload.get("label_values") or {n: [i] for i, n in enumerate(payload["class_names"]) if i}
    if all(v.label is not None for v in volumes):
        slices = SliceSet.from_volumes(volumes, spec, label_values)
        images, truth = slices.images, slices.labels
        owner = [slices.case_ids[i] for i in slices.case_index]
    else:
        for vol in volumes:
            check_window(vol, spec)
        images, truth = np.concatenate([preprocess_stack(v.hu, spec) for v in volumes]), None
        owner = [v.case_id for v in volumes for _ in range(v.hu.shape[0])]
    keys = [(None if truth is None else classes_present(truth[i]), float(images[i].mean())) for i in range(len(images))]
    chosen = stratify_slices(keys, count)
    seen: dict[str, int] = {}
    number = []
    for case in owner:
        number.append(seen.get(case, 0))
        seen[case] = number[-1] + 1
    return (images[chosen], None if truth is None else truth[chosen], [v.case_id for v in volumes],
            [owner[i] for i in chosen], [number[i] for i in chosen])


@pytest.mark.parametrize("payload, data, count", [
    (LIVER, None, 8), (LIVER, None, 1000), (LIVER, "phantom:cases=4,size=80,slices=10,seed=7", 6),
    (CHEST, "chest-phantom:cases=3,size=64,slices=16,seed=2", 9)])
def test_the_same_slices_as_with_every_case_in_memory(payload, data, count):
    images, truth, cases, slice_cases, case_slices = _all_at_once(payload, SPEC, data, count)
    found = load_verify_set(payload, SPEC, data, count)
    assert found.cases == cases and found.slice_cases == slice_cases and found.case_slices == case_slices
    np.testing.assert_array_equal(found.images, images)
    np.testing.assert_array_equal(found.truth, truth)


def case_growth(load) -> float:
    """How many case volumes (HU and label map) ``load(source)`` peaks higher on five phantom
    cases than on one, by tracemalloc: near 0 when cases are read one at a time."""
    def phantom(cases: int) -> str:
        return f"phantom:cases={cases},size=192,slices=40,seed=3"

    def peak(source: str) -> int:
        tracemalloc.start()
        try:
            load(source)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    load(phantom(1))  # imports and first-call caches
    one, many = peak(phantom(1)), peak(phantom(5))
    case = open_dataset(phantom(1))[0]
    return (many - one) / (case.hu.nbytes + case.label.nbytes)


def test_peak_does_not_grow_with_the_number_of_cases():
    # held at once, each further case adds its HU, label map and model-input slices
    growth = case_growth(lambda source: load_verify_set(LIVER, SPEC, source, 8))
    assert growth < 0.5, f"5 cases peaked {growth:.2f} case volumes above one"
