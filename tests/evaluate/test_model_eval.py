"""evaluate_checkpoint end to end on real data: slices for training, a DICOM series + SEG for testing."""

import math
from pathlib import Path

import nrrd
import numpy as np
import pytest

from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.models.checkpoint import checkpoint_spec, load_model
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("msd")
    cfg = TrainConfig(data=str(DATA / "msd_liver_slices"), out=str(out), size=64, base=4, depth=2, epochs=1,
                      batch_size=4, amp="off", fractions=(0.34, 0.33, 0.33))
    train(cfg, progress=False)
    return out / "best.pt"


def test_dicom_series_with_seg_is_evaluated_at_scanner_resolution(checkpoint, tmp_path):
    result = evaluate_checkpoint(checkpoint, str(DATA / "dcmqi_ct_liver"), split="all", out=tmp_path, progress=False)
    [case] = result["cases"]
    liver = case["metrics"]["liver"]
    truth = nrrd.read(str(DATA / "dcmqi_ct_liver" / "liver_seg.nrrd"))[0]
    assert case["slices"] == 3
    assert liver["truth_voxels"] == int((truth == 1).sum())  # the SEG's liver, at 512 x 512
    assert 0 <= liver["pred_voxels"] <= 3 * 512 * 512
    assert 0.0 <= liver["dice"] <= 1.0
    assert result["split"] == "all" and (tmp_path / "eval.json").is_file() and (tmp_path / "worst_cases.png").is_file()
    assert case["slices_without_class"]["liver"] == int((~(truth == 1).any(axis=(0, 1))).sum())
    assert 0 <= case["false_positive_slices"]["liver"] <= case["slices_without_class"]["liver"]
    line = f"false-positive slices (predicted, no true foreground): liver {result['false_positive_slices']['liver']} of "
    assert line in (tmp_path / "eval.txt").read_text()
    assert case["hd95_unit"] == "mm" and "\nHD95 in mm" in (tmp_path / "eval.txt").read_text()


def test_3d_postprocessing_can_only_remove_false_positive_slices(checkpoint):
    data = str(DATA / "msd_liver_slices")
    plain = evaluate_checkpoint(checkpoint, data, split="all", volume_postprocess=False, progress=False)
    with_3d = evaluate_checkpoint(checkpoint, data, split="all", volume_postprocess=True, progress=False)
    assert with_3d["postprocess"]["classes"]["1"]["keep_largest_3d"] is True
    assert all(not c["keep_largest_3d"] for c in plain["postprocess"]["classes"].values())
    for a, b in zip(plain["cases"], with_3d["cases"]):
        assert b["false_positive_slices"]["liver"] <= a["false_positive_slices"]["liver"]
        assert b["metrics"]["liver"]["pred_voxels"] <= a["metrics"]["liver"]["pred_voxels"]


def test_predictions_follow_the_numpy_reference_path(checkpoint):
    """The evaluation path (Segmenter with the torch runner: the C kernels) gives the labels the
    pure-numpy oracle path gives."""
    import torch

    from edgeseg.data import open_dataset
    from edgeseg.kernels import reference
    from edgeseg.runtime.segmenter import Segmenter

    model, payload = load_model(checkpoint)
    spec = checkpoint_spec(payload)
    [volume] = open_dataset(DATA / "dcmqi_ct_liver")
    with Segmenter.from_module(model, spec, dict(enumerate(payload["class_names"]))) as segmenter:
        labels = segmenter.predict_volume(volume)
    with torch.no_grad():
        logits = model(torch.from_numpy(reference.preprocess(volume.hu, spec).astype(np.float32))).numpy()
    expected = reference.postprocess(logits, volume.hu.shape[1:])
    # float32 logits computed twice can differ in the last bit; allow a handful of tie pixels.
    assert np.mean(labels != expected) < 1e-4


def test_split_auto_uses_recorded_test_cases(checkpoint):
    import torch

    payload = torch.load(checkpoint, weights_only=True)
    result = evaluate_checkpoint(checkpoint, str(DATA / "msd_liver_slices"), progress=False)
    assert result["split"] == "test"
    assert [c["case_id"] for c in result["cases"]] == payload["split"]["test"]
    hd = result["cases"][0]["metrics"]["liver"]["hd95"]
    assert math.isnan(hd) or hd >= 0


def test_mirroring_is_recorded_and_scores_the_mirrored_labels(checkpoint, tmp_path, monkeypatch):
    """evaluate --tta mirror runs four network passes per batch where one pass runs one, scores
    what a mirrored Segmenter predicts (pooled Dice per case against a numpy count), records the
    mode in eval.json and says it in eval.txt."""
    import json

    from edgeseg.data import open_dataset
    from edgeseg.runtime.runners.torch_module import TorchModuleRunner
    from edgeseg.runtime.segmenter import Segmenter

    calls = []
    original = TorchModuleRunner._infer
    monkeypatch.setattr(TorchModuleRunner, "_infer", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    data = str(DATA / "msd_liver_slices")
    plain = evaluate_checkpoint(checkpoint, data, split="test", progress=False)
    one_pass, calls[:] = list(calls), []
    result = evaluate_checkpoint(checkpoint, data, split="test", out=tmp_path, progress=False, tta="mirror")
    assert calls == [n for n in one_pass for _ in range(4)] and plain["tta"] == "none"
    assert json.loads((tmp_path / "eval.json").read_text())["tta"] == "mirror"
    assert "test-time mirroring: mirror" in (tmp_path / "eval.txt").read_text()
    model, payload = load_model(checkpoint)
    volumes = {v.case_id: v for v in open_dataset(data)}
    with Segmenter.from_module(model, checkpoint_spec(payload), dict(enumerate(payload["class_names"])),
                               payload.get("postprocess"), tta="mirror") as mirrored:
        for case in result["cases"]:
            volume = volumes[case["case_id"]]
            pred, truth = mirrored.predict_volume(volume) == 1, volume.label == 1
            total = pred.sum() + truth.sum()
            want = 2 * (pred & truth).sum() / total if total else 1.0
            assert case["metrics"]["liver"]["dice"] == pytest.approx(want, abs=1e-6)


def test_an_evaluation_writes_its_files_as_one_set(checkpoint, tmp_path, monkeypatch):
    """eval.json, eval.txt and worst_cases.png land together: an evaluation that fails while
    writing them leaves the earlier run's set whole, and a run without an overlay removes the
    earlier overlay instead of leaving it beside its own table."""
    import edgeseg.evaluate.model_eval as model_eval

    data = str(DATA / "dcmqi_ct_liver")
    evaluate_checkpoint(checkpoint, data, split="all", out=tmp_path, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["eval.json", "eval.txt", "worst_cases.png"]

    def broken_overlay(path, *args, **kwargs):
        path.write_bytes(b"half a png")
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(model_eval, "save_overlay_grid", broken_overlay)
        with pytest.raises(OSError, match="disk full"):
            evaluate_checkpoint(checkpoint, data, split="all", out=tmp_path, progress=False, volume_postprocess=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing replaced, no temporary left

    evaluate_checkpoint(checkpoint, data, split="all", out=tmp_path, progress=False, worst=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.txt"]


def test_split_auto_on_other_data_evaluates_every_case(tmp_path):
    """Every phantom names its cases case_000, case_001, ...: on another phantom than the one the
    model was trained on, the recorded test cases' names are other cases, so auto takes them all."""
    out = tmp_path / "run"
    train(TrainConfig(data="phantom:cases=4,size=64,slices=8", out=str(out), size=64, base=4, depth=2, epochs=1,
                      batch_size=4, amp="off"), progress=False)
    same = evaluate_checkpoint(out / "best.pt", "phantom:cases=4,size=64,slices=8", progress=False)
    assert same["split"] == "test" and len(same["cases"]) < 4
    other = evaluate_checkpoint(out / "best.pt", "phantom:cases=3,size=64,slices=4,seed=7", progress=False)
    assert other["split"] == "all" and sorted(c["case_id"] for c in other["cases"]) == ["case_000", "case_001", "case_002"]
