"""The sweep's reports without training: the Pareto front and the default-model rule against
brute force, and latencies compared only when measured on one machine."""

import csv
import json
import os
from pathlib import Path

import pytest

def test_pareto_front_by_brute_force():
    from edgeseg.sweep.report import pareto_front

    pts = [{"id": "a", "latency_ms_p50": 10, "dice_int8": 0.90}, {"id": "b", "latency_ms_p50": 5, "dice_int8": 0.80},
           {"id": "c", "latency_ms_p50": 12, "dice_int8": 0.85}, {"id": "d", "latency_ms_p50": 5, "dice_int8": 0.80},
           {"id": "e", "latency_ms_p50": 6, "dice_int8": 0.79}]
    # c is slower and worse than a; e is slower and worse than b; b and d tie and both stay.
    assert pareto_front(pts) == {"a", "b", "d"}
    # A point whose INT8 the gate refused competes with its FP32 Dice (what its bundle ships).
    refused = {"id": "f", "latency_ms_p50": 4, "dice_int8": None, "dice_fp32": 0.95}
    assert pareto_front(pts + [refused]) == {"f"}
    assert pareto_front(pts + [{**refused, "dice_fp32": 0.5}]) == {"a", "b", "d", "f"}


def test_latencies_from_different_machines_are_not_compared(tmp_path):
    """Points measured on two CPUs (sweeps resumed on other machines): no choice.json (one from
    before is removed), the CSV says where each was measured; measured on one machine again,
    the choice is made and names the machine."""
    from edgeseg.sweep.report import NOT_RECORDED, write_reports

    def pt(i, ms, dice, machine):
        return {"id": i, "model": "unet", "base": 4, "depth": 2, "size": 64, "params": 1, "gflop": 1.0,
                "latency_ms_p50": ms, "model_ms_p50": ms, "dice_int8": dice, "dice_fp32": dice,
                "volume_slices_per_s": 1000 / ms, "slice_size": 512, "commands": ["edgeseg train"], "machine": machine}

    choose = {"reference": "ref", "max_dice_loss": 0.005}
    a, b = "Xeon | 2 cpus | avx2,avx512f,avx512_vnni", "AMD EPYC | 2 cpus | avx2"
    (tmp_path / "choice.json").write_text("{}")
    points = [pt("ref", 40.0, 0.93, a), pt("small", 80.0, 0.93, b)]
    paths = write_reports(tmp_path, points, choose)
    assert "choice" not in paths and not (tmp_path / "choice.json").exists()
    assert [r["machine"] for r in csv.DictReader((tmp_path / "sweep.csv").open())] == [a, b]
    old = {k: v for k, v in pt("old", 10.0, 0.93, a).items() if k != "machine"}  # written before machines were recorded
    assert "choice" not in write_reports(tmp_path, [points[0], old], choose)
    assert [r["machine"] for r in csv.DictReader((tmp_path / "sweep.csv").open())] == [a, NOT_RECORDED]
    unknown = {k: v for k, v in points[0].items() if k != "machine"}
    assert "choice" not in write_reports(tmp_path, [unknown, old], choose)  # one bucket, but not a machine
    paths = write_reports(tmp_path, [points[0], {**points[1], "machine": a, "latency_ms_p50": 8.0}], choose)
    choice = json.loads(paths["choice"].read_text())
    assert choice["chosen"] == "small" and choice["machine"] == a and choice["speedup_end_to_end"] == 5.0


def test_machine_signature_names_the_cpu_its_count_and_speed_flags():
    from edgeseg.runtime.machine import SPEED_FLAGS, machine_signature

    info = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith(("flags", "Features"))), [])
    if model is None:
        pytest.skip("this /proc/cpuinfo names no CPU model (Arm): the signature falls back to the machine type")
    name, cpus, isa = machine_signature().split(" | ")
    assert name == model and cpus == f"{len(os.sched_getaffinity(0))} cpus"
    assert isa.split(",") == [f for f in SPEED_FLAGS if f in flags] or (isa == "-" and not set(SPEED_FLAGS) & set(flags))


def test_choose_default_is_the_fastest_point_within_the_dice_band_of_the_reference():
    from edgeseg.sweep.report import choose_default

    def pt(i, ms, d8, d32=0.9, gflop=1.0, model_ms=None, vol=100.0):
        return {"id": i, "latency_ms_p50": ms, "model_ms_p50": model_ms or ms / 2, "dice_int8": d8, "dice_fp32": d32,
                "gflop": gflop, "volume_slices_per_s": vol}

    ref = pt("ref", 40.0, 0.930, gflop=24.0, model_ms=30.0, vol=50.0)
    pts = [ref, pt("fast-bad", 5.0, 0.900), pt("mid", 16.0, 0.9252, gflop=6.0, model_ms=8.0, vol=150.0),
           pt("slow-good", 30.0, 0.940), pt("refused", 10.0, None, d32=0.9249)]
    choice = choose_default(pts, "ref", 0.005)
    # By hand: Dice floor 0.925; "mid" (0.9252) is in, "refused" (FP32 0.9249) and "fast-bad" are out.
    assert choice["chosen"] == "mid" and sorted(choice["eligible"]) == ["mid", "ref", "slow-good"]
    assert choice["speedup_end_to_end"] == 2.5 and choice["speedup_model"] == 3.75 and choice["gflop_ratio"] == 4.0
    assert choice["volume_throughput_ratio"] == 3.0 and choice["dice_difference"] == -0.0048
    assert choose_default(pts, "ref", 0.0)["chosen"] == "slow-good"  # faster and better than the reference
    kept = choose_default(pts[:3], "ref", 0.0)
    assert kept["chosen"] == "ref"  # nothing faster is as good: the reference stays
    # The faster misses, closest first, by hand: mid 0.9252 - 0.930 = -0.0048 at 40/16 = 2.5x;
    # fast-bad 0.900 - 0.930 = -0.030 at 8x; their FP32 equals the reference's (0.9).
    assert kept["faster_missed"] == [
        {"id": "mid", "dice_difference": -0.0048, "dice_fp32_difference": 0.0, "speedup_end_to_end": 2.5},
        {"id": "fast-bad", "dice_difference": -0.03, "dice_fp32_difference": 0.0, "speedup_end_to_end": 8.0}]
    # Faster than "mid" (16 ms): "refused" (FP32 deployed, 0.9249 - 0.930 = -0.0051; FP32 0.9249 - 0.9
    # = +0.0249; 4x) misses by less than fast-bad, so it comes first.
    assert choice["faster_missed"] == [
        {"id": "refused", "dice_difference": -0.0051, "dice_fp32_difference": 0.0249, "speedup_end_to_end": 4.0},
        {"id": "fast-bad", "dice_difference": -0.03, "dice_fp32_difference": 0.0, "speedup_end_to_end": 8.0}]
    assert choose_default(pts, "ref", 0.1)["chosen"] == "fast-bad"
    assert choose_default(pts[1:], "ref", 0.005) is None  # the reference is not finished yet
    # A point whose INT8 graph scores above its own FP32 model (quantisation noise on few slices)
    # is not chosen on that: its FP32 Dice must be in the band of the reference's FP32 Dice too.
    lucky = pt("lucky", 3.0, 0.945, d32=0.85)
    assert choose_default(pts + [lucky], "ref", 0.005)["chosen"] == "mid"
    assert choose_default(pts + [{**lucky, "dice_fp32": 0.896}], "ref", 0.005)["chosen"] == "lucky"
    # Brute force over random sweeps: no faster point is eligible, and the chosen one is.
    import random

    rng = random.Random(0)
    for _ in range(200):
        rand = [pt(f"p{k}", rng.uniform(1, 50), rng.choice([None, rng.uniform(0.8, 0.95)]), d32=rng.uniform(0.8, 0.95))
                for k in range(6)]
        got = choose_default(rand, "p0", 0.01)
        value = {p["id"]: (p["dice_int8"] if p["dice_int8"] is not None else p["dice_fp32"]) for p in rand}
        ok = [p for p in sorted(rand, key=lambda p: p["latency_ms_p50"])
              if value[p["id"]] >= value["p0"] - 0.01 and p["dice_fp32"] >= rand[0]["dice_fp32"] - 0.01]
        assert got["chosen"] == ok[0]["id"]


def _run(i, variant, seed, ms, d8, d32, machine="m"):
    return {"id": i, "variant": variant, "seed": seed, "model": "unet", "base": 4, "depth": 2, "size": 64, "params": 1,
            "gflop": 1.0, "latency_ms_p50": ms, "model_ms_p50": ms / 2, "dice_int8": d8, "dice_fp32": d32,
            "volume_slices_per_s": 1000 / ms, "slice_size": 512, "commands": ["edgeseg train"], "machine": machine}


def test_variants_take_their_runs_together_against_numpy():
    """A variant's row: mean and sample sd of its runs' deployed and FP32 Dice, their range, the
    median latency; checked against numpy on random sweeps."""
    import random

    import numpy as np

    from edgeseg.sweep.report import variant_rows

    rng = random.Random(1)
    for _ in range(100):
        runs = [_run(f"v{k % 3}-r{k}", f"v{k % 3}", k // 3, rng.uniform(1, 40), rng.choice([None, rng.uniform(0.7, 0.95)]),
                     rng.uniform(0.7, 0.95)) for k in range(rng.randint(1, 9))]
        rows = {v["id"]: v for v in variant_rows(runs)}
        assert list(rows) == list(dict.fromkeys(r["variant"] for r in runs))  # order of first appearance
        for vid, row in rows.items():
            mine = [r for r in runs if r["variant"] == vid]
            deployed = [r["dice_int8"] if r["dice_int8"] is not None else r["dice_fp32"] for r in mine]
            assert row["runs"] == len(mine) and row["run_ids"] == [r["id"] for r in mine]
            assert row["dice_deployed"] == pytest.approx(np.mean(deployed), abs=5e-5)
            assert row["dice_fp32"] == pytest.approx(np.mean([r["dice_fp32"] for r in mine]), abs=5e-5)
            if len(mine) > 1:
                assert row["dice_deployed_sd"] == pytest.approx(np.std(deployed, ddof=1), abs=5e-5)
            else:
                assert row["dice_deployed_sd"] is None
            assert (row["dice_deployed_min"], row["dice_deployed_max"]) == (round(min(deployed), 4), round(max(deployed), 4))
            assert row["latency_ms_p50"] == pytest.approx(np.median([r["latency_ms_p50"] for r in mine]), abs=5e-5)
            assert row["int8_refused_runs"] == sum(r["dice_int8"] is None for r in mine)
            assert row["dice_int8"] is None if any(r["dice_int8"] is None for r in mine) else \
                row["dice_int8"] == pytest.approx(np.mean([r["dice_int8"] for r in mine]), abs=5e-5)
    # A result written before variants were recorded is its own variant.
    old = {k: v for k, v in _run("old-id", "x", None, 5.0, 0.9, 0.9).items() if k not in ("variant", "seed")}
    assert [v["id"] for v in variant_rows([old])] == ["old-id"]


def test_the_rule_compares_variant_means_and_needs_min_runs(tmp_path):
    """By hand: the reference's three runs average 0.930; "steady" (three runs, mean 0.926) is in
    the 0.005 band; "lucky" is faster and its one run scores 0.95, but with min_runs 3 it takes no
    part; a reference short of runs means no choice, and a choice.json from before is removed."""
    from edgeseg.sweep.report import choose_default, no_choice_reason, variant_rows, write_reports

    runs = [_run("ref", "ref", 0, 40.0, 0.925, 0.93), _run("ref-s1", "ref", 1, 42.0, 0.935, 0.93),
            _run("ref-s2", "ref", 2, 41.0, 0.930, 0.93),
            _run("steady", "steady", 0, 10.0, 0.920, 0.93), _run("steady-s1", "steady", 1, 12.0, 0.930, 0.93),
            _run("steady-s2", "steady", 2, 11.0, 0.928, 0.93),
            _run("lucky", "lucky", 0, 5.0, 0.95, 0.95)]
    variants = variant_rows(runs)
    choice = choose_default(variants, "ref", 0.005, min_runs=3)
    assert choice["chosen"] == "steady" and choice["runs"] == 3 and choice["reference_runs"] == 3
    assert choice["dice"] == 0.926 and choice["reference_dice"] == 0.93 and choice["dice_difference"] == -0.004
    assert choice["speedup_end_to_end"] == round(41.0 / 11.0, 3) and choice["too_few_runs"] == ["lucky"]
    assert choice["dice_sd"] == pytest.approx(0.00529, abs=1e-5)
    assert choose_default(variants, "ref", 0.005, min_runs=1)["chosen"] == "lucky"
    assert choose_default(variants, "ref", 0.003, min_runs=3)["chosen"] == "ref"  # 0.926 is out of a 0.003 band

    short = [r for r in runs if r["id"] != "ref-s2"]
    assert choose_default(variant_rows(short), "ref", 0.005, min_runs=3) is None
    choose = {"reference": "ref", "max_dice_loss": 0.005, "min_runs": 3}
    assert no_choice_reason(variant_rows(short), choose) == "the reference ref has 2 of the 3 finished runs the rule needs"
    assert no_choice_reason(variant_rows(short[3:]), choose) == "the reference ref has no finished run"
    assert "choice" in write_reports(tmp_path, runs, choose)
    paths = write_reports(tmp_path, short, choose)
    assert "choice" not in paths and not (tmp_path / "choice.json").exists()
    rows = list(csv.DictReader(paths["variants"].open()))
    assert [(r["id"], r["runs"], r["seeds"], r["pareto"]) for r in rows] == [
        ("ref", "2", "0 1", "False"), ("steady", "3", "0 1 2", "False"), ("lucky", "1", "0", "True")]
    # The front is of variants (lucky, faster and better, dominates both); each run carries its variant's mark.
    assert [r["pareto"] for r in csv.DictReader(paths["csv"].open())] == ["False"] * 5 + ["True"]


def _exact_wilcoxon_p(diffs) -> float:
    """Two-sided exact signed-rank p by enumerating every sign pattern (distinct, non-zero |d|)."""
    import itertools

    ranks = {abs(d): k + 1 for k, d in enumerate(sorted(diffs, key=abs))}
    w_plus = sum(ranks[abs(d)] for d in diffs if d > 0)
    total = len(diffs) * (len(diffs) + 1) // 2
    low = min(w_plus, total - w_plus)
    patterns = list(itertools.product((0, 1), repeat=len(diffs)))
    as_low = sum(sum(r for r, s in zip(range(1, len(diffs) + 1), signs) if s) <= low for signs in patterns)
    return min(1.0, 2 * as_low / len(patterns))


def test_paired_gap_of_each_faster_miss_against_scipy_and_brute_force():
    """Runs pair by seed when they validated on the same cases; the per-seed gaps' 95 % interval
    is scipy's paired t-test interval, the case pairs' median and exact Wilcoxon p are computed
    here by brute force. A seed the reference lacks, or whose split differs, is left out."""
    import random

    import numpy as np
    from scipy import stats

    from edgeseg.sweep.report import choose_default, variant_rows

    rng = random.Random(7)
    cases = {s: [f"c{s}{k}" for k in range(3)] for s in range(4)}

    def run(i, variant, seed, ms, per_case, split=None):
        return {**_run(i, variant, seed, ms, float(np.mean(per_case)), float(np.mean(per_case))),
                "val_cases": split or cases[seed], "dice_int8_per_case": per_case,
                "dice_fp32_per_case": per_case}

    ref_cases = {s: [round(rng.uniform(0.85, 0.97), 4) for _ in range(3)] for s in range(3)}
    fast_cases = {s: [round(v + rng.uniform(-0.05, 0.03), 4) for v in ref_cases[s]] for s in range(3)}
    runs = [run(f"ref-s{s}", "ref", s, 40.0, ref_cases[s]) for s in range(3)]
    runs += [run(f"fast-s{s}", "fast", s, 10.0, fast_cases[s]) for s in range(3)]
    runs += [run("fast-s3", "fast", 3, 10.0, [0.5, 0.5, 0.5]),  # no reference run of seed 3
             run("other-s0", "other", 0, 20.0, [0.1, 0.1, 0.1], split=["x", "y", "z"]),  # another split
             run("other-s1", "other", 1, 20.0, [0.1, 0.1, 0.1], split=["x", "y", "z"])]
    choice = choose_default(variant_rows(runs), "ref", 0.005)
    assert choice["chosen"] == "ref"
    missed = {m["id"]: m for m in choice["faster_missed"]}
    assert "paired" not in missed["other"]
    paired = missed["fast"]["paired"]
    ref_mean = [np.mean(ref_cases[s]) for s in range(3)]
    fast_mean = [np.mean(fast_cases[s]) for s in range(3)]
    ci = stats.ttest_rel(fast_mean, ref_mean).confidence_interval(0.95)
    assert paired["seeds"] == 3
    assert paired["gap_mean"] == pytest.approx(np.mean(np.subtract(fast_mean, ref_mean)), abs=6e-5)
    assert paired["gap_ci95"] == pytest.approx([ci.low, ci.high], abs=6e-5)
    diffs = [a - b for s in range(3) for a, b in zip(fast_cases[s], ref_cases[s])]
    assert paired["case_pairs"] == 9 and paired["case_gap_median"] == pytest.approx(np.median(diffs), abs=6e-5)
    assert paired["case_wilcoxon_p"] == pytest.approx(_exact_wilcoxon_p(diffs), abs=6e-5)
    # Runs that recorded no seed or no validation cases (older results) are not paired.
    old = [{**r, "seed": None} for r in runs[:6]]
    assert "paired" not in choose_default(variant_rows(old), "ref", 0.005)["faster_missed"][0]
    unrecorded = [{k: v for k, v in r.items() if k != "val_cases"} for r in runs[:6]]
    assert "paired" not in choose_default(variant_rows(unrecorded), "ref", 0.005)["faster_missed"][0]
    # One seed pair: no interval, the mean gap alone.
    one = choose_default(variant_rows([runs[0], runs[3]]), "ref", 0.005)["faster_missed"][0]["paired"]
    assert one["seeds"] == 1 and one["gap_ci95"] is None
    assert one["gap_mean"] == pytest.approx(fast_mean[0] - ref_mean[0], abs=6e-5)


def test_the_deployed_dice_is_that_of_the_runner_auto_picked_and_scorings_are_not_mixed(tmp_path):
    """INT8 on an INT8 runner, FP32 on an FP32 one; points whose INT8 Dice was scored on ONNX
    Runtime alone (older results) are not compared with points scored on every runner."""
    from edgeseg.sweep.report import (EVERY_RUNNER, NOT_AUTOS, ONE_RUNNER, deployed_dice, int8_scoring, int8_scorings,
                                      pareto_front, write_reports)

    int8 = {"id": "a", "latency_ms_p50": 5, "dice_int8": 0.80, "dice_fp32": 0.90, "backend": "openvino:int8"}
    assert deployed_dice(int8) == 0.80
    assert deployed_dice({**int8, "backend": "onnxruntime:fp32"}) == 0.90
    assert deployed_dice({k: v for k, v in int8.items() if k != "backend"}) == 0.80  # not recorded: the INT8 graph
    assert deployed_dice({**int8, "dice_int8": None}) == 0.90  # the gate refused INT8
    slower = {"id": "b", "latency_ms_p50": 6, "dice_int8": 0.85, "dice_fp32": 0.85, "backend": "openvino:int8"}
    assert pareto_front([int8, slower]) == {"a", "b"}
    assert pareto_front([{**int8, "backend": "onnxruntime:fp32"}, slower]) == {"a"}

    def pt(i, ms, dice, runners):
        p = {"id": i, "model": "unet", "base": 4, "depth": 2, "size": 64, "params": 1, "gflop": 1.0, "backend": "openvino:int8",
             "latency_ms_p50": ms, "model_ms_p50": ms, "dice_int8": dice, "dice_fp32": dice, "machine": "m",
             "volume_slices_per_s": 1000 / ms, "slice_size": 512, "commands": ["edgeseg train"]}
        return {**p, "dice_int8_runners": {"openvino:int8": dice}, "dice_int8_backend": "openvino:int8"} if runners else p

    choose = {"reference": "ref", "max_dice_loss": 0.005}
    mixed = [pt("ref", 40.0, 0.93, True), pt("small", 8.0, 0.93, False)]
    assert int8_scorings(mixed) == {EVERY_RUNNER: 1, ONE_RUNNER: 1}
    (tmp_path / "choice.json").write_text("{}")
    assert "choice" not in write_reports(tmp_path, mixed, choose) and not (tmp_path / "choice.json").exists()
    assert "choice" in write_reports(tmp_path, [pt("ref", 40.0, 0.93, False), mixed[1]], choose)  # all older: alike
    refused = {**pt("small", 8.0, 0.93, False), "dice_int8": None}  # no INT8 Dice: nothing to mix
    assert int8_scorings([mixed[0], refused]) == {EVERY_RUNNER: 1}
    # auto picked an INT8 runner that was not scored (measured again elsewhere): not compared either
    elsewhere = {**pt("small", 8.0, 0.93, True), "backend": "tensorrt:int8"}
    assert int8_scoring(elsewhere) == NOT_AUTOS and "choice" not in write_reports(tmp_path, [mixed[0], elsewhere], choose)
    assert int8_scoring({**elsewhere, "backend": "openvino:fp32"}) is None  # FP32 deployed: its FP32 Dice counts
    paths = write_reports(tmp_path, [mixed[0], pt("small", 8.0, 0.93, True)], choose)
    assert json.loads(paths["choice"].read_text())["chosen"] == "small"


def test_the_pareto_plot_legend_covers_no_point():
    """Points spread over the whole plot (a sweep's grid of widths and depths): inside the axes,
    loc="best" had to put the legend over some of them."""
    import numpy as np

    from edgeseg.sweep.report import front_figure

    rows = [{**_run(f"m{m}-{i}", f"m{m}-{i}", 0, 5.0 + 10 * i, 0.80 + 0.03 * j, 0.80 + 0.03 * j),
             "model": f"model{m}", "pareto": i == j}
            for m in range(3) for i in range(5) for j in range(5) if (i + j) % 3 == m]
    figure = front_figure(rows, None, ["m"])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = figure.legends + [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and len(legends[0].get_texts()) == 4  # three models and the front
    box = legends[0].get_window_extent(renderer)
    assert figure.bbox.x0 <= box.x0 and box.x1 <= figure.bbox.x1 and figure.bbox.y0 <= box.y0
    ax = figure.axes[0]
    points = np.concatenate([c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections])
    assert len(points) >= len(rows)
    inside = (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
    assert not inside.any()
    texts = [t.get_window_extent(renderer) for t in ax.texts]
    assert texts and not any(box.overlaps(t) for t in texts)


def test_latencies_measured_with_different_library_versions_are_chosen_over_only_when_accepted(tmp_path):
    """A sweep resumed after an OpenVINO upgrade: its points' latencies came from two releases.
    No choice.json (one from before is removed) unless [choose] accept_mixed_versions; then
    choice.json lists what differed, counted by hand here. Points that agree make the choice as
    before and record nothing of it; so do points all written before versions were recorded."""
    from edgeseg.sweep.report import write_reports

    old = {"edgeseg": "0.1.0", "python": "3.11.9", "numpy": "2.1.0", "openvino": "2025.1.0", "onnxruntime": "1.20.1"}
    new = {**old, "openvino": "2025.2.0"}
    points = [{**_run(0, "ref", 0, 40.0, 0.93, 0.93), "versions": old},
              {**_run(1, "small", 0, 8.0, 0.93, 0.93), "versions": new},
              {**_run(2, "tiny", 0, 6.0, 0.80, 0.80), "versions": new}]
    choose = {"reference": "ref", "max_dice_loss": 0.005}
    (tmp_path / "choice.json").write_text("{}")
    paths = write_reports(tmp_path, points, choose)
    assert "choice" not in paths and not (tmp_path / "choice.json").exists()

    paths = write_reports(tmp_path, points, {**choose, "accept_mixed_versions": True})
    choice = json.loads(paths["choice"].read_text())
    assert choice["chosen"] == "small" and choice["mixed_versions"] == {"openvino": {"2025.1.0": 1, "2025.2.0": 2}}

    unrecorded = {k: v for k, v in points[0].items() if k != "versions"}  # measured before versions were recorded
    assert "choice" not in write_reports(tmp_path, [unrecorded, *points[1:]], choose)
    for alike in ([{**p, "versions": new} for p in points], [{k: v for k, v in p.items() if k != "versions"} for p in points]):
        choice = json.loads(write_reports(tmp_path, alike, choose)["choice"].read_text())
        assert choice["chosen"] == "small" and "mixed_versions" not in choice


def test_differing_versions_counts_each_library_by_hand():
    from edgeseg.sweep.versions import differing_versions, versions_text

    points = [{"versions": {"openvino": "2025.1.0", "numpy": "2.1.0"}}, {"versions": {"openvino": "2025.2.0", "numpy": "2.1.0"}},
              {"versions": {"numpy": "2.1.0"}}, {}]
    differ = differing_versions(points)
    assert differ == {"openvino": {"2025.1.0": 1, "2025.2.0": 1, "absent": 1, "not recorded": 1},
                      "numpy": {"2.1.0": 3, "not recorded": 1}}
    assert versions_text(differ) == ("openvino 2025.1.0 on 1, 2025.2.0 on 1, absent on 1, not recorded on 1; "
                                     "numpy 2.1.0 on 3, not recorded on 1")
