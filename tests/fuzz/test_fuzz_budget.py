"""A small seeded budget of the input fuzzing campaign (benchmarks/fuzz_inputs.py), about a minute.

The same mutations, entry points and outcome rules as the large campaign whose figures are in
docs/results.md; any traceback, crash, hang or over-memory case fails the test and names the
case indices, which `python benchmarks/fuzz_inputs.py --formats NAME=COUNT --seed 0
--findings DIR` reproduces.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import fuzz_inputs  # noqa: E402

SEED = 0
FILE_BUDGET = {"dicom": 40, "nifti": 60, "nrrd": 60, "npy": 100, "png": 100, "jpeg": 40, "dicom-seg": 4,
               "manifest": 8, "checkpoint": 30}
SERVER_BUDGET = {"kserve-json": 30, "kserve-binary": 30}


def _failures(tally) -> dict:
    return {outcome: tally.counts[outcome] for outcome in fuzz_inputs.FAILURES if tally.counts[outcome]}


@pytest.fixture(scope="module")
def file_results():
    pytest.importorskip("torch")  # the checkpoint seed and the fuzz bundle are made with torch
    return fuzz_inputs.run_campaign(FILE_BUDGET, SEED, log=lambda row: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FILE_BUDGET))
def test_mutated_files_give_a_clean_error_or_a_result(file_results, name):
    tally = file_results[name]
    assert sum(tally.counts.values()) == FILE_BUDGET[name]
    assert _failures(tally) == {}, f"{name}: cases {tally.failures} (seed {SEED})"
    # The mutations reach the reader: some inputs are refused, with edgeseg's own error.
    assert tally.counts["clean error"] > 0


@pytest.fixture(scope="module")
def server_results():
    pytest.importorskip("torch")
    pytest.importorskip("uvicorn")
    return fuzz_inputs.run_campaign(SERVER_BUDGET, SEED, log=lambda row: None)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SERVER_BUDGET))
def test_the_server_survives_mutated_requests(server_results, name):
    tally = server_results[name]
    assert sum(tally.counts.values()) == SERVER_BUDGET[name]
    dead = {k: v for k, v in _failures(tally).items() if k != "traceback"}
    assert dead == {}, f"{name}: cases {tally.failures} (seed {SEED})"
    assert tally.counts["clean error"] > 0 and tally.counts["success"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SERVER_BUDGET))
def test_the_server_answers_mutated_requests_without_5xx(server_results, name):
    tally = server_results[name]
    assert tally.counts["traceback"] == 0, f"{name}: 5xx answers to cases {tally.failures} (seed {SEED})"
