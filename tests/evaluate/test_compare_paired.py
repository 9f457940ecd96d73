"""Paired statistics of `edgeseg compare --paired`: numbers against oracles, pairing, refusals."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from edgeseg.errors import DataError
from edgeseg.evaluate.compare import load_run
from edgeseg.evaluate.paired import bootstrap_mean_ci, paired_statistics, wilcoxon_p

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_evaluated_run(folder, dice, hd95=None, case_ids=None, lr=0.001, sha256=None, truth=None):
    """A run folder whose eval/eval.json scores one class, liver, on ``case_ids``.

    ``hd95`` None entries are undefined (one mask empty); a Dice of 1 with an HD95 of 0 is a
    case without liver in either mask.
    """
    case_ids = case_ids or [f"case_{k:03d}" for k in range(len(dice))]
    hd95 = hd95 if hd95 is not None else [3.0] * len(dice)
    cases = []
    for k, (case_id, d, h) in enumerate(zip(case_ids, dice, hd95)):
        neither = d == 1.0 and h == 0.0
        metrics = {"dice": d, "iou": d / (2 - d), "hd95": h, "pred_voxels": 0 if neither or h is None else 50,
                   "truth_voxels": 0 if neither else (truth or {}).get(case_id, 100 + k)}
        cases.append({"case_id": case_id, "sha256": (sha256 or {}).get(case_id, f"{k:064x}"), "hd95_unit": "mm",
                      "metrics": {"liver": metrics}})
    folder.mkdir(parents=True)
    history = [{"epoch": 1, "val_dice": 0.8, "seconds": 1.0}]
    (folder / "metrics.json").write_text(json.dumps({"config": {"lr": lr, "labels": {"liver": [1]}},
                                                     "history": history}))
    (folder / "eval").mkdir()
    summary = {"liver": {"dice": {"mean": float(np.mean(dice))}, "hd95": {"mean": None}}}
    (folder / "eval" / "eval.json").write_text(json.dumps({"summary": summary, "cases": cases}))
    return folder


def compare(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "compare", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(7)
    base = rng.uniform(0.80, 0.95, 23)
    better = np.clip(base + rng.normal(0.01, 0.015, 23), 0, 1)
    better[[3, 11]] = base[[3, 11]]  # ties: zero differences
    return (make_evaluated_run(tmp_path / "A", base.tolist()),
            make_evaluated_run(tmp_path / "B", better.tolist(), lr=0.002), base, better)


def test_mean_difference_and_hd95_pairing_match_a_hand_computation(tmp_path):
    a = make_evaluated_run(tmp_path / "A", [0.80, 0.90, 1.0, 0.70, 0.0], hd95=[4.0, 2.0, 0.0, 6.0, None])
    b = make_evaluated_run(tmp_path / "B", [0.85, 0.88, 1.0, 0.75, 0.5], hd95=[3.0, 2.5, 0.0, None, 9.0])
    stats = paired_statistics([load_run(a), load_run(b)], resamples=1000)
    dice, hd95 = stats["rows"]
    # (0.05 - 0.02 + 0 + 0.05 + 0.5) / 5
    assert dice["metric"] == "dice" and dice["n"] == 5 and dice["mean_diff"] == pytest.approx(0.116)
    # case_002 has liver in neither mask (its HD95 of 0 measures nothing), case_003 and case_004
    # lack an HD95 in one run: only (3 - 4) and (2.5 - 2) are paired
    assert hd95["n"] == 2 and hd95["left_out"] == 3 and hd95["mean_diff"] == pytest.approx(-0.25)
    assert hd95["differences"] == pytest.approx({"case_000": -1.0, "case_001": 0.5})
    assert stats["reference"] == "A" and stats["cases"] == 5 and stats["dropped"] == 0


def test_bootstrap_interval_matches_independent_resampling(pair):
    _, _, base, better = pair
    diff = better - base
    low, high = bootstrap_mean_ci(diff, resamples=10_000, seed=5)
    # the documented scheme, written out: one draw of all resampled indices
    indices = np.random.default_rng(5).integers(0, diff.size, size=(10_000, diff.size))
    expected = np.percentile(diff[indices].mean(axis=1), [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected), abs=1e-12)
    # scipy's paired bootstrap draws other resamples: equal within Monte-Carlo error
    oracle = scipy.stats.bootstrap((base, better), lambda x, y, axis=-1: np.mean(y - x, axis=axis), paired=True,
                                   vectorized=True, n_resamples=10_000, method="percentile",
                                   confidence_level=0.95, random_state=np.random.default_rng(99))
    width = high - low
    assert low == pytest.approx(oracle.confidence_interval.low, abs=0.05 * width)
    assert high == pytest.approx(oracle.confidence_interval.high, abs=0.05 * width)
    assert low < diff.mean() < high


def test_resampling_in_blocks_draws_the_stream_of_one_draw(monkeypatch):
    import edgeseg.evaluate.paired as paired

    diff = np.random.default_rng(3).normal(size=37)
    whole = bootstrap_mean_ci(diff, resamples=2_000, seed=1)
    monkeypatch.setattr(paired, "_BLOCK_ELEMENTS", 37 * 7)  # blocks of 7 resamples, the last one short
    assert bootstrap_mean_ci(diff, resamples=2_000, seed=1) == whole


def test_wilcoxon_p_is_scipys_on_the_differences(pair):
    run_a, run_b, base, better = pair
    stats = paired_statistics([load_run(run_a), load_run(run_b)], resamples=1000)
    dice = stats["rows"][0]
    diff = better - base
    assert np.count_nonzero(diff == 0) == 2
    # the exact p of the non-zero differences: given the zeros too, method="exact" drops them in
    # scipy 1.17.1 but scipy 1.10.0 (the floor) switched to the normal approximation (0.04202)
    exact = scipy.stats.wilcoxon(diff[diff != 0], method="exact").pvalue
    assert dice["wilcoxon_p"] == pytest.approx(exact, rel=1e-12)
    assert dice["wilcoxon_p"] == pytest.approx(scipy.stats.wilcoxon(diff[diff != 0]).pvalue, rel=1e-12)
    assert dice["zero_differences"] == 2 and dice["mean_diff"] == pytest.approx(diff.mean(), abs=1e-15)
    assert stats["zero_method"] == "wilcox"
    assert wilcoxon_p(np.zeros(6)) is None  # nothing to rank


def test_many_tied_cases_do_not_turn_the_wilcoxon_p_approximate():
    """Three cases better among 60 scored alike: scipy given all 63 differences switches to the
    normal approximation (p 0.11) although only three are ranked, whose exact p is 2 / 2**3."""
    diff = np.array([0.0] * 60 + [0.01, 0.02, 0.03])
    assert wilcoxon_p(diff) == pytest.approx(0.25)
    assert wilcoxon_p(diff) == pytest.approx(scipy.stats.wilcoxon(diff[diff != 0], method="exact").pvalue)


def test_cli_prints_and_writes_the_paired_statistics(pair, tmp_path):
    run_a, run_b, base, better = pair
    out = tmp_path / "comparison"
    proc = compare(run_a, run_b, "--paired", "--resamples", "2000", "--seed", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "paired against A: 23 cases\n" in proc.stdout
    dice_line = next(line for line in proc.stdout.splitlines() if line.split()[:3] == ["B", "liver", "dice"])
    diff = better - base
    low, high = np.percentile(diff[np.random.default_rng(4).integers(0, 23, size=(2000, 23))].mean(axis=1),
                              [2.5, 97.5])
    assert dice_line.split()[3:6] == ["23", f"{diff.mean():.4f}", f"[{low:.4f},"]
    document = json.loads((out / "compare.json").read_text())["paired"]
    assert document["resamples"] == 2000 and document["seed"] == 4 and document["reference"] == "A"
    row = document["rows"][0]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), abs=1e-12)
    assert len(row["differences"]) == 23
    assert (out / "compare_paired.png").read_bytes()[:8] == PNG_SIGNATURE

    # a later compare without --paired leaves no plot of the earlier statistics beside its table
    assert compare(run_a, run_b, "--out", out).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.json", "compare.png"]


def test_different_case_sets_are_refused_in_one_line_with_nothing_written(tmp_path, assert_one_line_error):
    ids = [f"case_{k:03d}" for k in range(8)]
    a = make_evaluated_run(tmp_path / "A", [0.9] * 8, case_ids=ids)
    b = make_evaluated_run(tmp_path / "B", [0.8] * 8, case_ids=ids[:6] + ["other_1", "other_2"])
    out = tmp_path / "out"
    proc = compare(a, b, "--paired", "--out", out)
    assert_one_line_error(proc, "the evaluations did not score the same cases: 4 of 10 case ids are not in every "
                                "run (e.g. case_006, missing from B); pass --common-cases")
    assert proc.stdout == "" and not out.exists()


def test_common_cases_pairs_the_shared_cases_and_says_how_many_were_dropped(tmp_path):
    ids = [f"case_{k:03d}" for k in range(8)]
    dice_a = [0.90, 0.80, 0.70, 0.85, 0.60, 0.75, 0.95, 0.65]
    dice_b = [0.92, 0.79, 0.75, 0.86, 0.66, 0.70, 0.10, 0.10]
    a = make_evaluated_run(tmp_path / "A", dice_a, case_ids=ids)
    b = make_evaluated_run(tmp_path / "B", dice_b, case_ids=ids[:6] + ["other_1", "other_2"])
    out = tmp_path / "out"
    proc = compare(a, b, "--paired", "--common-cases", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "paired against A: 6 cases; --common-cases left out 4 not scored by every run (e.g. case_006)" in proc.stdout
    document = json.loads((out / "compare.json").read_text())["paired"]
    assert document["cases"] == 6 and document["dropped"] == 4
    assert document["dropped_cases"] == ["case_006", "case_007", "other_1", "other_2"]
    # (0.02 - 0.01 + 0.05 + 0.01 + 0.06 - 0.05) / 6
    assert document["rows"][0]["mean_diff"] == pytest.approx(0.08 / 6)


def test_reference_picks_the_run_the_others_are_measured_against(pair, tmp_path, assert_one_line_error):
    run_a, run_b, base, better = pair
    c = make_evaluated_run(tmp_path / "C", (base - 0.01).tolist(), lr=0.003)
    stats = paired_statistics([load_run(p) for p in (run_a, run_b, c)], reference="B", resamples=1000)
    assert [(r["run"], r["metric"]) for r in stats["rows"]] == [("A", "dice"), ("A", "hd95"), ("C", "dice"),
                                                                ("C", "hd95")]
    assert stats["rows"][0]["mean_diff"] == pytest.approx((base - better).mean(), abs=1e-15)
    assert stats["rows"][2]["mean_diff"] == pytest.approx((base - 0.01 - better).mean(), abs=1e-15)
    proc = compare(run_a, run_b, "--paired", "--reference", "Z", "--out", tmp_path / "out")
    assert_one_line_error(proc, "the reference Z names no run of this comparison; the runs are A, B")
    assert not (tmp_path / "out").exists()


def test_paired_options_without_paired_are_refused(pair, assert_one_line_error):
    run_a, run_b, _, _ = pair
    for option in (["--reference", "B"], ["--common-cases"], ["--resamples", "5000"], ["--seed", "1"]):
        assert_one_line_error(compare(run_a, run_b, *option), f"{option[0]} applies to paired statistics; add --paired")
    assert_one_line_error(compare(run_a, run_b, "--paired", "--resamples", "10"), "--resamples")


def test_a_case_id_scored_on_other_content_or_truth_is_refused(tmp_path, assert_one_line_error):
    a = make_evaluated_run(tmp_path / "A", [0.9, 0.8, 0.7])
    other_data = make_evaluated_run(tmp_path / "B", [0.9, 0.8, 0.7], sha256={"case_001": "f" * 64})
    proc = compare(a, other_data, "--paired")
    assert_one_line_error(proc, "case case_001 has other content in B's evaluation than in A's")
    other_labels = make_evaluated_run(tmp_path / "C", [0.9, 0.8, 0.7], truth={"case_002": 555})
    with pytest.raises(DataError, match="case case_002: the liver truth has 555 voxels in C's evaluation and 102"):
        paired_statistics([load_run(a), load_run(other_labels)])


def test_a_run_without_per_case_results_is_refused(pair, tmp_path, assert_one_line_error):
    run_a, _, _, _ = pair
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.json").write_text(json.dumps({"config": {"lr": 0.01}, "history": []}))
    assert_one_line_error(compare(run_a, bare, "--paired"), "run bare has no eval/eval.json; paired statistics need "
                                                            "every run evaluated")


def test_few_cases_get_one_warning_with_the_smallest_possible_p(tmp_path):
    a = make_evaluated_run(tmp_path / "A", [0.80, 0.90, 0.70, 0.60, 0.85])
    b = make_evaluated_run(tmp_path / "B", [0.81, 0.92, 0.73, 0.64, 0.90])
    proc = compare(a, b, "--paired")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "edgeseg: warning: some differences are paired over only 5 cases: with under 10 the bootstrap interval "
        "covers the true mean difference less often than 95%, and an exact Wilcoxon p cannot fall below 0.0625"]
    # five differences all of one sign: the smallest p there is, by scipy too
    dice_line = next(line for line in proc.stdout.splitlines() if line.split()[:3] == ["B", "liver", "dice"])
    assert float(dice_line.split()[-1]) == pytest.approx(scipy.stats.wilcoxon([0.01, 0.02, 0.03, 0.04, 0.05]).pvalue)
    assert scipy.stats.wilcoxon([0.01, 0.02, 0.03, 0.04, 0.05]).pvalue == pytest.approx(0.0625)
