"""Trained on phantom volumes that hold liver-free slices (foreground sampling on, as by
default), a model is evaluated on held-out phantom volumes of another seed: eval.txt's
false-positive line counts the slices where it predicts liver that hold none, as a
numpy-reference prediction of the same checkpoint, filtered with scipy, counts them. On three
middle slices of each held-out volume the liver is taken out of the truth, so that slices the
model rightly sees liver on are false positives by the labels: the count cannot pass as 0."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from edgeseg.data import open_dataset
from edgeseg.data.phantom import phantom_geometry, write_phantom_dataset
from edgeseg.evaluate.model_eval import evaluate_checkpoint
from edgeseg.kernels import reference
from edgeseg.models.checkpoint import checkpoint_spec, load_model
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

PHANTOM = "phantom:cases=6,seed=3,size=64,slices=16"
CLEARED = slice(7, 10)  # the slices whose truth loses its liver, in (Z, Y, X) order


def _held_out(folder: Path) -> Path:
    """Two phantom volumes of another seed, liver removed from the truth of slices CLEARED."""
    shape, spacing = phantom_geometry(64, 16)
    out = write_phantom_dataset(folder, cases=2, seed=11, shape=shape, spacing=spacing)
    for path in sorted((out / "labelsTr").glob("*.nii.gz")):
        image = nib.load(str(path))
        labels = np.asarray(image.dataobj).copy()  # (X, Y, Z) as stored
        assert (labels[:, :, CLEARED] == 1).any()
        labels[:, :, CLEARED][labels[:, :, CLEARED] == 1] = 0
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), str(path))
    return out


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    cfg = TrainConfig(data=PHANTOM, out=str(out / "run"), size=64, base=8, depth=2, epochs=6, batch_size=8, lr=5e-3,
                      window=(-200.0, 300.0), amp="off", fractions=(0.5, 0.17, 0.33), foreground_share=1 / 3)
    train(cfg, progress=False)
    data = _held_out(out / "held-out")
    # No largest-component or 3-D filters; the minimum size chosen at training stays (the
    # reference below applies it with scipy).
    evaluation = evaluate_checkpoint(out / "run" / "best.pt", str(data), split="all", keep_largest=False,
                                     volume_postprocess=False, out=out / "eval", progress=False)
    return out, data, evaluation


def test_false_positive_slices_of_held_out_volumes_are_counted_in_eval_txt(evaluated):
    out, data, evaluation = evaluated
    model, payload = load_model(out / "run" / "best.pt")
    spec = checkpoint_spec(payload)
    volumes = {v.case_id: v for v in open_dataset(data)}
    assert sorted(c["case_id"] for c in evaluation["cases"]) == sorted(volumes) and len(volumes) == 2
    free_total = fp_total = 0
    for case in evaluation["cases"]:
        volume = volumes[case["case_id"]]
        with torch.no_grad():
            logits = model(torch.from_numpy(reference.preprocess(volume.hu, spec).astype(np.float32))).numpy()
        labels = _min_size(reference.postprocess(logits, volume.hu.shape[1:]), evaluation["postprocess"])
        has_truth = (volume.label == 1).any(axis=(1, 2))
        has_pred = (labels == 1).any(axis=(1, 2))
        assert not has_truth[CLEARED].any()
        assert case["slices_without_class"]["liver"] == int((~has_truth).sum())
        assert case["false_positive_slices"]["liver"] == int((has_pred & ~has_truth).sum())
        free_total += int((~has_truth).sum())
        fp_total += int((has_pred & ~has_truth).sum())
    # The model sees the liver the truth no longer has on most of the cleared slices.
    assert fp_total >= 4, fp_total
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
