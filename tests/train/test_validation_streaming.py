"""Validation streams case by case: no read spans two cases, the whole set's labels are never
read, each case's predictions go to a file of their own, and the figures equal the whole-set
computation (``metrics.per_case_dice`` on every slice at once)."""

import contextlib

import numpy as np
import pytest
import torch

from edgeseg.data.slice_set import SliceSet
from edgeseg.metrics import per_case_dice
from edgeseg.train.validate import CasePredictions, choose_postprocess, validate

CLASSES = 3


class OneCaseAtATime:
    """A validation set that refuses whole-set label reads and records every read."""

    def __init__(self, images, labels, case_index):
        self._labels, self.case_index, self.reads = labels, case_index, []
        self.case_ids = [str(k) for k in np.unique(case_index)]
        outer = self

        class Images:
            def __len__(self):
                return len(images)

            def __getitem__(self, rows):
                cases = set(outer.case_index[rows].tolist())
                assert len(cases) == 1, f"one read spans cases {sorted(cases)}"
                outer.reads.append(("images", cases.pop(), len(np.atleast_1d(rows))))
                return images[rows]

        self.images = Images()

    @property
    def labels(self):
        raise AssertionError("validation read the labels of every case at once")

    def case_labels(self, k):
        self.reads.append(("labels", k))
        return self._labels[self.case_index == k]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    case_index = np.repeat(np.arange(4, dtype=np.int32), [5, 23, 1, 9])  # 23: a batch of 16, then one of 7
    images = rng.normal(size=(len(case_index), 1, 16, 16)).astype(np.float32)
    labels = np.zeros((len(case_index), 16, 16), np.uint8)
    labels[:, 4:12, 4:12] = 1
    labels[::3, 6:9, 6:9] = 2
    return images, labels, case_index


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, CLASSES, 3, padding=1))


def test_validation_reads_one_case_at_a_time_and_equals_the_whole_set(tmp_path):
    images, labels, case_index = _data()
    model = _model()
    streamed = OneCaseAtATime(images, labels, case_index)
    keep = CasePredictions(tmp_path / "val")
    loss_fn = torch.nn.CrossEntropyLoss()
    got = validate(model, streamed, CLASSES, torch.device("cpu"), contextlib.nullcontext, loss_fn,
                   torch.contiguous_format, keep=keep)
    assert [r for r in streamed.reads if r[0] == "labels"] == [("labels", k) for k in range(4)]
    assert max(r[2] for r in streamed.reads if r[0] == "images") <= 16  # batches of at most 16

    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(images))
    whole = logits.argmax(1).numpy().astype(np.uint8)
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == [f"{k}.npy" for k in range(4)]
    for k in range(4):
        np.testing.assert_array_equal(keep.get(k), whole[case_index == k])
    expected = per_case_dice(whole, labels, case_index, CLASSES)
    np.testing.assert_allclose(got["per_class"], expected, rtol=0, atol=1e-12)
    assert got["dice"] == np.mean(expected)
    # The loss: the slice-weighted mean of per-batch cross-entropy, batches cut at case ends.
    batches = [(k, s) for k in range(4) for s in range(0, int(np.sum(case_index == k)), 16)]
    per_batch = [(float(loss_fn(logits[case_index == k][s:s + 16], torch.from_numpy(labels[case_index == k][s:s + 16]).long())),
                  len(labels[case_index == k][s:s + 16])) for k, s in batches]
    assert np.isclose(got["loss"], sum(v * n for v, n in per_batch) / len(labels), rtol=1e-6)

    # The post-processing choice reads the files case by case and chooses as on the whole arrays.
    streamed.reads.clear()
    from_files = choose_postprocess(keep, streamed, CLASSES)
    assert {r[0] for r in streamed.reads} == {"labels"}
    assert from_files == choose_postprocess(whole, SliceSet(images, labels, case_index, streamed.case_ids), CLASSES)
    keep.remove()
    assert not (tmp_path / "val").exists()


def _whole_array_choice(pred, truth, case_index, num_classes, voxel_ml):
    """The choice as it was made before validation streamed (4ca85bb), on whole arrays: every
    candidate scored by ``per_case_dice`` over all slices, 3-D filters per case by row index."""
    from dataclasses import replace

    from edgeseg.kernels import filter_components
    from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES, ClassPostprocess, PostprocessOptions
    from edgeseg.train.validate import VOLUME_CANDIDATES_ML

    cases = [np.flatnonzero(case_index == i) for i in np.unique(case_index)]

    def apply(options, n):
        parsed = PostprocessOptions.from_dict(options, n)
        rules = parsed.slice_rules(pred.shape[-2:], pred.shape[-2:])
        out = filter_components(pred, rules) if rules else pred.copy()
        if parsed.filters_volume:
            for i, rows in enumerate(cases):
                spacing = None if voxel_ml is None else (voxel_ml[i] * 1000.0, 1.0, 1.0)
                out[rows] = filter_components(out[rows], parsed.volume_rules(spacing), volume=True)
        return out

    def scores(labels):
        return per_case_dice(labels, truth, case_index, num_classes)

    def one(c, option):
        return scores(apply(PostprocessOptions(classes={c: option}).to_dict(), c + 1))[c - 1]

    plain, chosen = scores(pred), {}
    for c in range(1, num_classes):
        best, best_dice = ClassPostprocess(), plain[c - 1]
        for keep, pixels in SLICE_CANDIDATES[1:]:
            option = ClassPostprocess(keep_largest=keep, min_pixels=pixels)
            if (value := one(c, option)) > best_dice:
                best, best_dice = option, value
        sliced = best
        for keep3d, ml in [(True, 0.0)] + [(k, ml) for ml in (VOLUME_CANDIDATES_ML if voxel_ml else ()) for k in (False, True)]:
            option = ClassPostprocess(sliced.keep_largest, sliced.min_pixels, keep3d, ml)
            if (value := one(c, option)) > best_dice:
                best, best_dice = option, value
        if best != ClassPostprocess():
            chosen[c] = best

    def mean_of(options):
        return float(np.mean(scores(apply(PostprocessOptions(classes=options).to_dict(), num_classes))))

    best_value = mean_of(chosen) if chosen else 0.0
    for c in sorted(chosen):
        for d in range(1, num_classes):
            if d != c and (value := mean_of(trial := {**chosen, c: replace(chosen[c], removed_to=d)})) > best_value:
                chosen, best_value = trial, value
    options = PostprocessOptions(classes=chosen).to_dict()
    final = scores(apply(options, num_classes))
    return {**options, "val_dice": float(np.mean(plain)), "val_dice_post": float(np.mean(final)),
            "val_dice_per_class": plain, "val_dice_post_per_class": final}


def test_streamed_choice_equals_the_whole_array_choice_with_3d_candidates(tmp_path):
    """Nine cases of noisy predictions (islands, holes, stray slices), with a voxel volume per
    case so the minimum-volume candidates run: the choice from per-case files equals the
    whole-array computation it replaced, over several random draws."""
    rng = np.random.default_rng(3)
    for draw in range(4):
        sizes = rng.integers(2, 7, size=9)
        case_index = np.repeat(np.arange(9, dtype=np.int32), sizes)
        truth = np.zeros((len(case_index), 24, 24), np.uint8)
        truth[:, 4:16, 4:16] = 1
        truth[:, 17:22, 14:21] = 2  # class 2 is two blobs, so keeping its largest 3-D part loses one
        truth[:, 1:4, 18:23] = 2
        pred = truth.copy()
        for z in range(len(pred)):
            for _ in range(rng.integers(0, 4)):  # one-slice islands of either class, up to 49 px
                y, x, h = rng.integers(0, 20), rng.integers(0, 20), rng.integers(1, 8)
                pred[z, y:y + h, x:x + h] = rng.integers(1, 3)
            if rng.random() < 0.3:
                pred[z, 6:10, 6:10] = 0
        # One voxel's mL per case over two decades, so a minimum volume in mL is a different
        # number of voxels in every case (0.1 mL: 1 to 100 voxels).
        voxel_ml = [float(v) for v in 10 ** rng.uniform(-3, -1, size=9)]
        images = np.zeros((len(case_index), 1, 24, 24), np.float32)
        keep = CasePredictions(tmp_path / f"draw{draw}")
        for k in range(9):
            keep.put(k, pred[case_index == k])
        streamed = OneCaseAtATime(images, truth, case_index)
        got = choose_postprocess(keep, streamed, CLASSES, voxel_ml)
        want = _whole_array_choice(pred, truth, case_index, CLASSES, voxel_ml)
        assert got["classes"] == want["classes"], draw
        for key in ("val_dice", "val_dice_post"):
            assert got[key] == pytest.approx(want[key], abs=1e-12)
        np.testing.assert_allclose(got["val_dice_post_per_class"], want["val_dice_post_per_class"], atol=1e-12)


STOP_IN_VALIDATION = """
import json, os, signal, sys
import torch
from edgeseg.stopping import Terminated, sigterm_stops
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train
from edgeseg.train.validate import CasePredictions

out, cache = sys.argv[1], sys.argv[2]
cases_done, epochs_done, cases_per_epoch = [], [], []
put = CasePredictions.put

def put_then_stop(self, k, labels):
    put(self, k, labels)
    cases_done.append(k)
    if len(cases_done) == 1 and epochs_done == [1]:  # the second epoch's first validation case
        os.kill(os.getpid(), signal.SIGTERM)

def on_epoch(row):
    epochs_done.append(row["epoch"])
    cases_per_epoch.append(len(cases_done))
    cases_done.clear()

CasePredictions.put = put_then_stop
cfg = TrainConfig(data="phantom:cases=8,size=64,slices=4", out=out, size=64, base=4, depth=2, epochs=3,
                  batch_size=8, amp="off", workers=0, fractions=(0.5, 0.5, 0.0), cache=cache)
try:
    with sigterm_stops():
        train(cfg, progress=False, on_epoch=on_epoch)
    stopped = False
except Terminated:
    stopped = True
last = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=False)["epoch"]
print(json.dumps({"stopped": stopped, "epochs": epochs_done, "cases_per_epoch": cases_per_epoch,
                  "cases_after": len(cases_done), "last_epoch": last}))
"""


def test_a_sigterm_during_validation_stops_it_before_the_next_case(tmp_path):
    """Training took a SIGTERM only after the whole validation set: on a large one that can
    outlast a batch system's kill wait. One process now takes it between two cases; the epoch
    being validated is not saved (last.pt stays the last finished epoch). The SIGTERM goes to a
    fresh interpreter, not to the test runner's own process."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STOP_IN_VALIDATION, str(tmp_path / "run"), str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # stopped after 1 of the 4 validation cases of epoch 2; epoch 1 (all 4 cases) is the last saved
    assert result == {"stopped": True, "epochs": [1], "cases_per_epoch": [4], "cases_after": 1, "last_epoch": 1}
