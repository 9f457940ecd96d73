"""Cross-validation figures: per-slice Dice against a brute-force count, fold aggregation against
numpy, the filter candidates against scipy and the cross-fitted choice against a brute-force
search (`edgeseg cv` end to end: tests/train/test_cv_command.py)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.evaluate.cross_validation import candidate_dice, crossfit_postprocess, per_slice_dice, summarise_folds
from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES


def _brute_dice(p: np.ndarray, t: np.ndarray) -> float:
    inter = sum(1 for a, b in zip(p.ravel(), t.ravel()) if a and b)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2 * inter / total


def test_per_slice_dice_binary_and_per_class():
    truth = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    truth[0, 0:2, 0:2], truth[0, 2:4, 2:4] = 1, 2
    pred[0, 0:2, 0:3], pred[0, 3, 2:4] = 1, 1          # the consolidation called GGO
    truth[1, 1, 1] = 1                                  # slice 2: no class 2 on either side
    rows = per_slice_dice(pred, truth, ["background", "ggo", "consolidation"])
    assert rows[0]["binary"] == pytest.approx(_brute_dice(pred[0] > 0, truth[0] > 0))   # 2*6/(8+8)
    assert rows[0]["binary"] == pytest.approx(0.75)
    assert rows[0]["ggo"] == pytest.approx(2 * 4 / (8 + 4))
    assert rows[0]["consolidation"] == 0.0
    assert (rows[1]["binary"], rows[1]["ggo"], rows[1]["consolidation"]) == (0.0, 0.0, 1.0)


def test_fold_summary_is_the_mean_and_sample_std_of_fold_means():
    rng = np.random.default_rng(0)
    folds = []
    for k, n in enumerate((3, 4, 3)):
        slices = [{"binary": float(b), "ggo": float(g)} for b, g in rng.random((n, 2))]
        folds.append({"fold": k, "epoch": 7, "classes": ["background", "ggo"], "slices": slices})
    summary = summarise_folds(folds)
    means = np.array([[np.mean([s[m] for s in f["slices"]]) for m in ("binary", "ggo")] for f in folds])
    np.testing.assert_allclose([summary["mean"]["binary"], summary["mean"]["ggo"]], means.mean(0))
    np.testing.assert_allclose([summary["std"]["binary"], summary["std"]["ggo"]], means.std(0, ddof=1))
    every = [s["binary"] for f in folds for s in f["slices"]]
    assert summary["pooled"]["binary"] == pytest.approx(np.mean(every)) and summary["slices"] == 10


def _scipy_filter(mask: np.ndarray, keep_largest: bool, min_size: int) -> np.ndarray:
    """One class's mask after the filter, from scipy's 8-connected labelling."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = np.zeros(n + 1, bool)
    for k in range(1, n + 1):
        keep[k] = sizes[k] >= min_size
    if keep_largest and n:
        largest = 1 + int(np.argmax(sizes[1:]))
        keep[:] = False
        keep[largest] = sizes[largest] >= min_size
    return keep[lab]


def test_candidate_dice_matches_scipy_filters_scaled_to_the_slice_size():
    rng = np.random.default_rng(3)
    truth = (rng.random((3, 40, 48)) < 0.5).astype(np.uint8) * rng.integers(1, 3, (3, 40, 48)).astype(np.uint8)
    pred = np.zeros_like(truth)
    for z in range(3):  # blobs of 1..90 pixels of both classes, apart from each other
        for k, (r, c) in enumerate([(2, 2), (2, 20), (15, 5), (15, 30), (28, 10), (28, 36)]):
            h, w = 1 + (k + z) % 5, 1 + (3 * k + z) % 18
            pred[z, r:r + h, c:c + w] = 1 + (k + z) % 2
    names = ["background", "ggo", "consolidation"]
    model_size = (20, 12)  # the slices are 8x the model's area: min_pixels 4 / 16 become 32 / 128 pixels
    rows = candidate_dice(pred, truth, names, model_size)
    ratio = (40 * 48) / (20 * 12)
    for z, row in enumerate(rows):
        for (c, name), (d, other) in (((1, "ggo"), (2, "consolidation")), ((2, "consolidation"), (1, "ggo"))):
            assert len(row["candidates"][name]) == len(SLICE_CANDIDATES)
            for i, (keep, pixels) in enumerate(SLICE_CANDIDATES):
                kept = _scipy_filter(pred[z] == c, keep, int(np.ceil(pixels * ratio)) if pixels else 0)
                got = row["candidates"][name][i]
                assert got == pytest.approx(_brute_dice(kept, truth[z] == c)), (z, name, keep, pixels)
                # what the filter removed, given to the other class (itself unfiltered)
                receiving = (pred[z] == d) | ((pred[z] == c) & ~kept)
                got = row["candidates_given"][name][other][i]
                assert got == pytest.approx(_brute_dice(receiving, truth[z] == d)), (z, name, keep, pixels)
    # the candidates differ on these slices, so a filter that did nothing would be caught
    assert len({round(v, 6) for row in rows for v in row["candidates"]["consolidation"]}) > 3
    assert len({round(v, 6) for row in rows for v in row["candidates_given"]["consolidation"]["ggo"]}) > 3


def _brute_crossfit(folds: list[dict], k: int, name: str, other: str) -> tuple[int, bool]:
    """The candidate with the best mean on the other folds (first on ties), and whether giving
    its removed pixels to ``other`` raises other's mean there."""
    others = [s for j, f in enumerate(folds) if j != k for s in f["slices"]]
    best, best_mean = 0, -1.0
    for i in range(len(SLICE_CANDIDATES)):
        mean = sum(s["candidates"][name][i] for s in others) / len(others)
        if mean > best_mean + 1e-12:
            best, best_mean = i, mean
    gain = sum(s["candidates_given"][name][other][best] - s["candidates"][other][0] for s in others) / len(others)
    return best, gain > 0


def test_crossfit_choice_is_the_best_on_the_other_folds_and_ignores_the_fold_itself():
    rng = np.random.default_rng(5)
    names = ["ggo", "consolidation"]
    folds = []
    for k, n in enumerate((4, 3, 5, 2)):
        slices = [{"candidates": {name: [float(v) for v in rng.random(len(SLICE_CANDIDATES))] for name in names},
                   "candidates_given": {name: {other: [float(v) for v in rng.random(len(SLICE_CANDIDATES))]
                                               for other in names if other != name} for name in names}}
                  for _ in range(n)]
        folds.append({"fold": k, "classes": ["background", *names], "slices": slices})
    choices = crossfit_postprocess(folds)
    given = 0
    for k, choice in enumerate(choices):
        for c, name in enumerate(names, start=1):
            want, give = _brute_crossfit(folds, k, name, names[2 - c])
            got = choice["classes"].get(str(c))
            if want == 0:
                assert got is None
            else:
                keep, pixels = SLICE_CANDIDATES[want]
                assert (got["keep_largest"], got["min_pixels"]) == (keep, pixels)
                assert got.get("removed_to", 0) == (3 - c if give else 0)
                given += give
    assert 0 < given < sum(len(c["classes"]) for c in choices)  # both outcomes of the removed_to choice occur
    # fold 0's own scores do not enter its choice: make its best candidate perfect and look again
    for s in folds[0]["slices"]:
        s["candidates"]["ggo"] = [0.0] * (len(SLICE_CANDIDATES) - 1) + [1.0]
    assert crossfit_postprocess(folds)[0] == choices[0]
    # a tie keeps the lighter, earlier candidate: no filter
    tied = [{"fold": k, "classes": ["background", "ggo"],
             "slices": [{"candidates": {"ggo": [0.5] * len(SLICE_CANDIDATES)}, "candidates_given": {}}]}
            for k in range(2)]
    assert all(choice["classes"] == {} for choice in crossfit_postprocess(tied))


def test_the_runtime_with_a_candidate_filter_scores_what_the_candidate_scored():
    """The cross-fitted figures come from the Segmenter running the chosen filters; the choice
    comes from candidate_dice on unfiltered predictions. Both must agree, for every candidate."""
    torch = pytest.importorskip("torch")
    from edgeseg.data.volume import Volume, default_affine
    from edgeseg.evaluate.cross_validation import score_volumes
    from edgeseg.runtime.postprocess_options import ClassPostprocess, PostprocessOptions
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.spec import PreprocessSpec

    class Levels(torch.nn.Module):
        """Class 1 where the windowed input is in (0.3, 0.6], class 2 above: the labels are the
        input's own blobs, so every candidate filter has components of many sizes to act on."""

        def forward(self, x):
            one, two = ((x > 0.3) & (x <= 0.6)).float(), (x > 0.6).float()
            return torch.cat([1 - one - two, one, two], 1) * 10

    rng = np.random.default_rng(11)
    hu = np.zeros((3, 60, 52), np.float32)
    label = np.zeros(hu.shape, np.uint8)
    for z in range(3):
        for _ in range(14):  # blobs of 1..80 pixels
            r, c, h, w = rng.integers(0, 54), rng.integers(0, 46), rng.integers(1, 7), rng.integers(1, 13)
            value = int(rng.integers(1, 3))
            hu[z, r:r + h, c:c + w] = 120.0 if value == 1 else 220.0
            truth_blob = label[z, r:r + h, c:c + w]
            truth_blob[...] = value if rng.random() < 0.7 else 0  # some blobs are false positives
    volume = Volume(hu=hu, spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)), case_id="c0", label=label)
    names = ["background", "ggo", "consolidation"]
    payload = {"class_names": names}
    spec = PreprocessSpec(window=(0.0, 255.0), size=(30, 26))  # a quarter of the slice's area
    with Segmenter.from_module(Levels().eval(), spec, dict(enumerate(names)), {"keep_largest": False}) as plain:
        rows = score_volumes(plain, [volume], payload, candidates=True)
    seen = set()
    for (c, name), other in (((1, "ggo"), "consolidation"), ((2, "consolidation"), "ggo")):
        for i, (keep, pixels) in enumerate(SLICE_CANDIDATES):
            for to in (0, 3 - c):
                option = ClassPostprocess(keep_largest=keep, min_pixels=pixels, removed_to=to)
                options = PostprocessOptions(classes={c: option}).to_dict()
                with Segmenter.from_module(Levels().eval(), spec, dict(enumerate(names)), options) as filtered:
                    got = score_volumes(filtered, [volume], payload)
                for row, want in zip(got, rows):
                    assert row[name] == pytest.approx(want["candidates"][name][i]), (name, keep, pixels)
                    if to:
                        assert row[other] == pytest.approx(want["candidates_given"][name][other][i]), (name, i)
                    seen.add(round(row[name], 6))
    assert len(seen) > 6  # the filters changed the scores: a filter that did nothing would be caught
