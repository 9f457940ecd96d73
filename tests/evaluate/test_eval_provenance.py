"""eval.json names what it scored by content: the checkpoint's sha256 and the cases' content hashes."""

import hashlib

import torch

from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.models.checkpoint import read_checkpoint

from ..conftest import BUNDLE_TRAINING


def test_evaluation_records_the_checkpoint_and_data_it_scored(trained_checkpoint, one_torch_thread):
    payload = read_checkpoint(trained_checkpoint)
    trained_on = payload["provenance"]["data"]
    result = evaluate_checkpoint(trained_checkpoint, BUNDLE_TRAINING["data"], split="test", progress=False, worst=0)
    assert result["checkpoint_sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    # the same content hashes as training's: the test cases scored are those the run held out
    assert {c["case_id"]: c["sha256"] for c in result["cases"]} == {
        case: trained_on["case_sha256"][case] for case in payload["split"]["test"]}
    assert result["data_sha256"] == trained_on["split_sha256"]["test"]
    assert result["environment"]["threads"] == torch.get_num_threads() == 1
    assert result["environment"]["libraries"]["torch"] == torch.__version__
