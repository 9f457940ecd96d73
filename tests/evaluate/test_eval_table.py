"""eval.txt's table says how many cases its mean HD95 leaves out: with the class missed in every
case that has it, the mean over the rest (both masks empty: 0) read 0.0000 and looked perfect."""

import math

import numpy as np

from edgeseg.evaluate.model_eval import _table
from edgeseg.metrics import class_metrics, summarise


def _case(case_id: str, pred: np.ndarray, truth: np.ndarray) -> dict:
    metrics = class_metrics(pred, truth, num_classes=3, spacing=(1.0, 1.0, 1.0))
    return {"case_id": case_id, "slices": len(truth), "metrics": {"ggo": metrics[1], "consolidation": metrics[2]}}


def test_the_cases_a_mean_hd95_leaves_out_are_counted_under_the_table():
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[:, 4:10, 4:10] = 1
    with_consolidation = truth.copy()
    with_consolidation[:, 11:14, 11:14] = 2
    # the model finds the ground-glass everywhere and never the consolidation
    cases = [_case("a", truth, with_consolidation), _case("b", truth, with_consolidation), _case("c", truth, truth)]
    # the oracle, from the per-case values: consolidation's HD95 is a distance to nothing in a and b,
    # and 0 in c, where both masks are empty
    hd = [c["metrics"]["consolidation"]["hd95"] for c in cases]
    assert math.isnan(hd[0]) and math.isnan(hd[1]) and hd[2] == 0.0
    summary = summarise([{name: c["metrics"][name] for name in ("ggo", "consolidation")} for c in cases])
    result = {"slice_dice_mean": 1.0, "slice_dice_by_class": {"ggo": 1.0, "consolidation": 0.0}}
    text = _table(cases, ["background", "ggo", "consolidation"], summary, result)
    assert "HD95 undefined (one mask empty), left out of the mean: consolidation 2 of 3 case(s)" in text.splitlines()
    assert "ggo" not in text.split("left out of the mean:")[1].splitlines()[0]  # defined in every case
    # c's 0 is no boundary measured: no case is left to average, and the table says why
    assert summary["consolidation"]["hd95"]["n"] == 0 and math.isnan(summary["consolidation"]["hd95"]["mean"])
    assert summary["consolidation"]["dice"]["mean"] == 1 / 3
    assert ("class in neither mask (Dice and IoU 1 in the mean, HD95 left out): consolidation 1 of 3 case(s)"
            in text.splitlines())


def test_the_slices_a_per_slice_hd95_leaves_out_are_counted_under_the_table():
    # A slice folder case: the lesion on slices 1-4, found on 2-4 and also invented on slice 6.
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[1:5, 4:9, 4:9] = 1
    pred = np.zeros_like(truth)
    pred[2:5, 4:9, 5:10] = 1
    pred[6, 10:12, 10:12] = 1
    metrics = class_metrics(pred, truth, num_classes=2, per_slice_hd=True)[1]
    # the oracle: slices 1 (missed) and 6 (invented) have the class in one mask only; slices
    # 2-4 are squares one column apart (HD95 1), and the rest hold the class in neither mask
    assert (metrics["hd95_slices"], metrics["hd95_undefined_slices"], metrics["hd95"]) == (5, 2, 1.0)
    case = {"case_id": "a", "slices": 8, "metrics": {"lesion": metrics}}
    summary = summarise([{"lesion": metrics}, {"lesion": metrics}])
    text = _table([case, dict(case, case_id="b")], ["background", "lesion"], summary, {"slice_dice_mean": 0.5})
    assert ("HD95 per slice undefined (one mask empty), left out of the case means: lesion 4 of 10 slice(s) "
            "with the class") in text.splitlines()
