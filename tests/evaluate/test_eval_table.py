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
