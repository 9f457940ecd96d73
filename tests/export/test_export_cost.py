"""What an export costs: per-stage time and peak memory in parity.json, and the float16 check
on a stratified subset (the full check behind a setting)."""

import json
import time

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.export.fp16 import half_check_slices
from edgeseg.export.profiles import ExportSettings
from edgeseg.export.stages import record_stages, stage

MB = 1024 * 1024


def test_stage_peak_is_the_memory_touched_inside_that_stage():
    with record_stages() as stages:
        with stage("big"):
            block = np.ones(300 * MB // 8)  # 300 MB touched
            del block
            with stage("inner"):
                inner = np.ones(100 * MB // 8)
                del inner
        with stage("small"):
            time.sleep(0.05)
    big, inner, small = stages
    assert [s["name"] for s in stages] == ["big", "big/inner", "small"]
    if big["peak_scope"] != "stage":
        pytest.skip("this kernel cannot reset the peak-RSS mark (/proc/self/clear_refs)")
    # The outer stage keeps the 300 MB it saw before the inner stage reset the mark.
    assert big["peak_rss_mb"] - small["peak_rss_mb"] > 250
    assert 80 < inner["peak_rss_mb"] - small["peak_rss_mb"] < 250
    assert small["seconds"] >= 0.05 and big["seconds"] >= inner["seconds"]


def test_process_peak_survives_the_resets_of_later_stages():
    from edgeseg.export.stages import process_peak_mb

    with record_stages():
        with stage("big"):
            block = np.ones(400 * MB // 8)
            del block
        with stage("small"):
            pass
        peak = process_peak_mb()
        with stage("after"):
            pass
        assert process_peak_mb() >= peak
    assert peak >= 400


def test_stage_outside_a_record_does_nothing():
    with stage("alone"):
        pass
    with record_stages() as stages:
        pass
    assert stages == []


def test_half_check_subset_is_stratified_and_full_is_everything():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)
    truth = np.zeros((20, 8, 8), np.int64)
    truth[::2, 2:4, 2:4] = 1  # even slices hold target
    pick = half_check_slices(images, truth, "subset", 6)
    assert len(pick) == 6 and sum(bool(truth[i].any()) for i in pick) == 3
    means = images.mean(axis=(1, 2, 3))
    for group in (np.arange(0, 20, 2), np.arange(1, 20, 2)):  # both ends of intensity in each half
        assert group[means[group].argmax()] in pick and group[means[group].argmin()] in pick
    assert list(half_check_slices(images, truth, "full", 6)) == list(range(20))
    assert list(half_check_slices(images, None, "subset", 50)) == list(range(20))
    with pytest.raises(DataError, match="fp16 check"):
        ExportSettings(fp16_check="most")


def test_channels_last_half_equals_default_layout_half(eager, slices):
    """The faster channels-last float16 kernels give torch's default-layout float16 logits."""
    import copy

    import torch

    from edgeseg.export.fp16 import half_precision_logits

    model = copy.deepcopy(eager[0]).eval().half()
    with torch.no_grad():
        plain = model(torch.from_numpy(slices).half()).float().numpy()
    fast = half_precision_logits(eager[0], slices, 4)
    scale = float(np.abs(plain).max())
    assert np.abs(fast - plain).max() <= 4 * scale * 2.0**-11  # a few float16 ulps at the largest logit
    assert (fast.argmax(axis=1) != plain.argmax(axis=1)).mean() < 1e-3


def test_parity_report_has_stages_and_the_subset_half_check(bundle):
    report = json.loads((bundle["bundle"] / "parity.json").read_text())
    names = [s["name"] for s in report["stages"]]
    for expected in ("load-checkpoint", "onnx", "fp16-convert", "int8-calibrate", "gate", "gate/reference",
                     "gate/fp16-half-check"):
        assert expected in names
    assert all(s["seconds"] >= 0 and s["peak_rss_mb"] > 0 for s in report["stages"])
    assert report["peak_rss_mb"] >= max(s["peak_rss_mb"] for s in report["stages"]) - 1
    half = [r for r in report["results"] if r["run_on"] == "torch-float16-cpu"]
    assert report["fp16_check"] == {"mode": "subset", "slices": half[0].get("slices", report["slices"])}
    assert report["fp16_check"]["slices"] == min(8, report["slices"])
