"""What evaluate is given: --labels matched to the model's classes by name, a split of the run's
cases only on the run's data, an --out outside the data, a non-empty data source."""

import json
import shutil
import subprocess
import sys

import pytest

from edgeseg.data import open_dataset
from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

TRAINED_ON = "phantom:cases=4,size=64,slices=16"
OTHER_DATA = "phantom:cases=4,size=64,slices=16,seed=5"


def edgeseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A liver (1) and spine (2) model trained on TRAINED_ON."""
    out = tmp_path_factory.mktemp("liver-spine")
    train(TrainConfig(data=TRAINED_ON, out=str(out), labels={"liver": [1], "spine": [2]}, size=64, base=4, depth=2,
                      epochs=1, batch_size=8, amp="off"), progress=False)
    return out / "best.pt"


def test_labels_are_matched_to_the_classes_by_name_whatever_their_order(checkpoint):
    """--labels spine=2,liver=1 scores liver against the source's 1 and spine against its 2, as the
    model's own classes are (by position, liver would be scored against the spine)."""
    volumes = {v.case_id: v for v in open_dataset(TRAINED_ON)}
    result = evaluate_checkpoint(checkpoint, TRAINED_ON, split="all", labels={"spine": [2], "liver": [1]},
                                 progress=False)
    assert result["classes"] == ["background", "liver", "spine"]
    for case in result["cases"]:
        label = volumes[case["case_id"]].label
        assert case["metrics"]["liver"]["truth_voxels"] == int((label == 1).sum()) > 0
        assert case["metrics"]["spine"]["truth_voxels"] == int((label == 2).sum()) > 0
    as_trained = evaluate_checkpoint(checkpoint, TRAINED_ON, split="all", progress=False)
    assert [c["metrics"] for c in as_trained["cases"]] == [c["metrics"] for c in result["cases"]]


@pytest.mark.parametrize("labels, message", [
    ("spleen=1,spine=2", "--labels names spleen, which the model does not predict; its classes are liver, spine"),
    ("liver=1", "--labels gives no values for spine"),
])
def test_labels_naming_another_class_or_leaving_one_out_are_refused(checkpoint, tmp_path, labels, message,
                                                                      assert_one_line_error):
    proc = edgeseg("evaluate", checkpoint, "--data", TRAINED_ON, "--labels", labels, "--out", tmp_path / "eval",
                   "--quiet")
    assert_one_line_error(proc, message)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("split", ["test", "val", "train"])
def test_a_split_of_the_run_is_refused_on_other_data(checkpoint, tmp_path, split, assert_one_line_error):
    """Every phantom names its cases case_000, case_001, ...: on another phantom the run's test
    cases' names are other cases, so an explicit split is refused (auto and all take them all)."""
    proc = edgeseg("evaluate", checkpoint, "--data", OTHER_DATA, "--split", split, "--out", tmp_path / "eval", "--quiet")
    assert_one_line_error(proc, f"--split {split} takes the run's {split} cases, and {OTHER_DATA} is other data")
    assert "use --split all (or auto)" in proc.stderr and not (tmp_path / "eval").exists()
    assert evaluate_checkpoint(checkpoint, OTHER_DATA, split="auto", progress=False)["split"] == "all"
    run_split = json.loads((checkpoint.parent / "split.json").read_text())
    same = evaluate_checkpoint(checkpoint, TRAINED_ON, split=split, progress=False)
    assert sorted(c["case_id"] for c in same["cases"]) == sorted(run_split[split])


@pytest.mark.parametrize("where", ["eval", "."])
def test_an_out_inside_the_data_folder_is_refused_and_the_data_left_as_it_was(checkpoint, tmp_path, where,
                                                                                assert_one_line_error):
    data = tmp_path / "phantom"
    synth = edgeseg("data", "synth", "--out", data, "--cases", 2, "--size", 64, "--slices", 8, "--quiet")
    assert synth.returncode == 0, synth.stderr
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    proc = edgeseg("evaluate", checkpoint, "--data", data, "--split", "all", "--out", data / where, "--quiet")
    assert_one_line_error(proc, f"is inside the data folder {data}; write the evaluation outside the data")
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before
    ok = edgeseg("evaluate", checkpoint, "--data", data, "--split", "all", "--out", tmp_path / "eval", "--quiet")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "eval" / "worst_cases.png").is_file()



def test_a_split_of_the_run_is_refused_on_a_folder_of_other_same_named_cases(tmp_path, assert_one_line_error):
    """A folder at another path may be the run's data moved or copied, or other data: its cases'
    content hashes tell. Same-named cases of other content (another phantom seed) are refused under
    an explicit split, and auto takes every case; a copy of the run's own folder keeps its split."""
    trained_on, other, run = tmp_path / "data", tmp_path / "other", tmp_path / "run"
    for folder, seed in ((trained_on, 0), (other, 5)):
        synth = edgeseg("data", "synth", "--out", folder, "--cases", 4, "--size", 64, "--slices", 8, "--seed", seed,
                        "--quiet")
        assert synth.returncode == 0, synth.stderr
    train(TrainConfig(data=str(trained_on), out=str(run), size=64, base=4, depth=2, epochs=1, batch_size=4,
                      amp="off"), progress=False)
    test_cases = json.loads((run / "split.json").read_text())["test"]
    test_case = test_cases[0]
    proc = edgeseg("evaluate", run / "best.pt", "--data", other, "--split", "test", "--out", tmp_path / "eval", "--quiet")
    assert_one_line_error(proc, f"--split test takes the run's test cases, and case {test_case} of {other} is another "
                                "case than the run's of that name")
    assert not (tmp_path / "eval").exists()
    assert evaluate_checkpoint(run / "best.pt", str(other), split="auto", progress=False)["split"] == "all"

    copy = tmp_path / "copy"
    shutil.copytree(trained_on, copy)
    same = evaluate_checkpoint(run / "best.pt", str(copy), split="test", progress=False)
    assert sorted(c["case_id"] for c in same["cases"]) == sorted(test_cases)
