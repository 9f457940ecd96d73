"""Validation streams case by case: no read spans two cases, the whole set's labels are never
read, each case's predictions go to a file of their own, and the figures equal the whole-set
computation (``metrics.per_case_dice`` on every slice at once)."""

import contextlib

import numpy as np
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
    case_index = np.repeat(np.arange(4, dtype=np.int32), [5, 23, 1, 9])  # 23: two batches of 16 and a short one
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
