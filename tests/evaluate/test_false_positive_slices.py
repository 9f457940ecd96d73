"""Trained on phantom volumes that hold liver-free slices (foreground sampling on, as by
default), a model is evaluated on held-out phantom volumes: eval.txt's false-positive line
counts the slices where it predicts liver that hold none, as a numpy-reference prediction of the
same checkpoint, filtered with scipy, counts them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from edgeseg.data import open_dataset
from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.kernels import reference
from edgeseg.models.checkpoint import checkpoint_spec, load_model
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

PHANTOM = "phantom:cases=6,seed=3,size=64,slices=16"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    cfg = TrainConfig(data=PHANTOM, out=str(out / "run"), size=64, base=8, depth=2, epochs=6, batch_size=8, lr=5e-3,
                      window=(-200.0, 300.0), amp="off", fractions=(0.5, 0.17, 0.33), foreground_share=1 / 3)
    result = train(cfg, progress=False)
    # No largest-component or 3-D filters; the minimum size chosen at training stays (the
    # reference below applies it with scipy).
    evaluation = evaluate_checkpoint(out / "run" / "best.pt", PHANTOM, split="test", keep_largest=False,
                                     volume_postprocess=False, out=out / "eval", progress=False)
    return out, result, evaluation


def test_false_positive_slices_of_held_out_volumes_are_counted_in_eval_txt(evaluated):
    out, result, evaluation = evaluated
    model, payload = load_model(out / "run" / "best.pt")
    spec = checkpoint_spec(payload)
    volumes = {v.case_id: v for v in open_dataset(PHANTOM)}
    assert [c["case_id"] for c in evaluation["cases"]] == result["split"]["test"]
    free_total = fp_total = predicted = 0
    for case in evaluation["cases"]:
        volume = volumes[case["case_id"]]
        with torch.no_grad():
            logits = model(torch.from_numpy(reference.preprocess(volume.hu, spec).astype(np.float32))).numpy()
        labels = _min_size(reference.postprocess(logits, volume.hu.shape[1:]), evaluation["postprocess"])
        has_truth = (volume.label == 1).any(axis=(1, 2))
        has_pred = (labels == 1).any(axis=(1, 2))
        assert case["slices_without_class"]["liver"] == int((~has_truth).sum()) > 0
        assert case["false_positive_slices"]["liver"] == int((has_pred & ~has_truth).sum())
        free_total += int((~has_truth).sum())
        fp_total += int((has_pred & ~has_truth).sum())
        predicted += int(has_pred.sum())
    # The model learned the liver (so a count of 0 would mean something): it predicts it on
    # slices and scores a real Dice.
    assert predicted > 0 and np.mean([c["metrics"]["liver"]["dice"] for c in evaluation["cases"]]) > 0.5
    line = f"false-positive slices (predicted, no true foreground): liver {fp_total} of {free_total}"
    assert line in (Path(out) / "eval" / "eval.txt").read_text().splitlines()


def _min_size(labels: np.ndarray, postprocess: dict) -> np.ndarray:
    """Liver components (8-connected, per slice) under the recorded minimum size become background."""
    rule = postprocess["classes"].get("1", {})
    assert not rule.get("keep_largest") and not rule.get("keep_largest_3d")
    out = labels.copy()
    for z in range(len(out)):
        found, _ = ndimage.label(out[z] == 1, structure=np.ones((3, 3)))
        sizes = np.bincount(found.ravel())
        small = np.flatnonzero(sizes < rule.get("min_pixels", 0))
        out[z][np.isin(found, small[small > 0])] = 0
    return out
