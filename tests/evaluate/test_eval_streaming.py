"""evaluate reads, predicts and scores one case at a time: what it holds at its peak does not grow
with the number of cases (a folder of 600-slice CTs held whole needs 2 bytes per voxel of every
case), and the cases come out as they would one by one, in data order. Peaks are measured with
tracemalloc, which sees numpy's allocations."""

from __future__ import annotations

import tracemalloc

import pytest

from edgeseg.data import open_dataset
from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

CASES = 4


def _phantom(cases: int) -> str:
    return f"phantom:cases={cases},size=128,slices=48,seed=3"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("stream-run")
    train(TrainConfig(data="phantom:cases=2,size=64,slices=8", out=str(out), size=64, base=4, depth=2, epochs=1,
                      batch_size=8, amp="off"), progress=False)
    return out / "best.pt"


def _evaluate_traced(checkpoint, data: str, out) -> tuple[dict, int]:
    tracemalloc.start()
    try:
        result = evaluate_checkpoint(checkpoint, data, split="all", out=out, progress=False)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_does_not_grow_with_the_number_of_cases(checkpoint, tmp_path):
    evaluate_checkpoint(checkpoint, _phantom(1), split="all", progress=False)  # imports and first-call caches
    one, one_peak = _evaluate_traced(checkpoint, _phantom(1), tmp_path / "one")
    many, many_peak = _evaluate_traced(checkpoint, _phantom(CASES), tmp_path / "many")

    case = open_dataset(_phantom(1))[0]
    case_bytes = case.hu.nbytes + case.label.nbytes
    # held whole, each further case adds its HU and label map (and its overlay kept the case's arrays)
    assert many_peak - one_peak < case_bytes / 2, (
        f"{CASES} cases peaked {(many_peak - one_peak) / case_bytes:.2f} case volumes above one case")
    assert [c["case_id"] for c in many["cases"]] == [f"case_{i:03d}" for i in range(CASES)]
    assert many["cases"][0] == one["cases"][0]
    assert (tmp_path / "many" / "worst_cases.png").is_file()
