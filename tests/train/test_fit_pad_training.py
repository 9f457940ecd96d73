"""Training with fit=pad: ``edgeseg train --fit pad`` records it, and training slices and their
masks share the padded geometry of the numpy oracle."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from edgeseg.data.phantom import synth_phantom
from edgeseg.data.slice_set import SliceSet, map_labels
from edgeseg.kernels import reference
from edgeseg.models.checkpoint import checkpoint_spec, read_checkpoint
from edgeseg.spec import PreprocessSpec


def test_slice_set_pads_images_and_masks_like_the_oracle():
    volume = synth_phantom("wide", 2, shape=(3, 90, 160))
    spec = PreprocessSpec(window=(-200.0, 300.0), size=(64, 64), fit="pad")
    labels = {"liver": [1]}
    slices = SliceSet.from_volumes([volume], spec, labels)
    np.testing.assert_allclose(slices.images, reference.preprocess(volume.hu, spec), atol=1e-5)
    want = reference.preprocess_labels(map_labels(volume.label, labels), spec)
    np.testing.assert_array_equal(slices.labels, want)
    rows, cols, top, left = spec.fit_box(90, 160)
    assert (rows, cols, top, left) == (36, 64, 14, 0)
    assert slices.labels[:, top:top + rows].any()
    assert not slices.labels[:, :top].any() and not slices.labels[:, top + rows:].any()


def test_train_fit_pad_is_recorded_in_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "--data", "phantom:cases=3,size=48,slices=4",
                           "--size", "32", "--base", "4", "--depth", "2", "--epochs", "1", "--window", "-200,300",
                           "--fit", "pad", "--out", str(out), "--quiet", "--amp", "off"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    payload = read_checkpoint(out / "best.pt")
    assert checkpoint_spec(payload).fit == "pad"
    assert payload["spec"]["fit"] == "pad"
    assert payload["train_config"]["fit"] == "pad"
