"""`edgeseg cv` end to end on a synthetic label-map slice folder: every fold trained and scored,
every slice tested once, and a second run resumes without training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def test_cv_command_runs_every_fold_then_resumes_without_training(tmp_path, lesion_slices):
    data = lesion_slices(6, seed=2)
    out = tmp_path / "cv"
    args = [sys.executable, "-m", "edgeseg.cli", "cv", "--data", data, "--out", out, "--folds", 3,
            "--case-pattern", "file", "--labels", "faint=1,bright=2", "--window", "0,255", "--size", 32,
            "--base", 4, "--depth", 2, "--epochs", 1, "--batch-size", 2, "--amp", "off", "--quiet"]
    first = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("training from epoch 1") == 3
    result = json.loads((out / "cv.json").read_text())
    assert [row["fold"] for row in result["per_fold"]] == [0, 1, 2]
    assert result["slices"] == 6 and result["metrics"] == ["binary", "faint", "bright"]
    scored = sorted(s["case_id"] for k in range(3)
                    for s in json.loads((out / f"fold{k}" / "cv_scores.json").read_text())["slices"])
    assert scored == [f"{i:03d}" for i in range(6)]          # every slice tested exactly once
    _check_crossfit(out, result)
    again = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "training from" not in again.stdout
    assert json.loads((out / "cv.json").read_text())["mean"] == result["mean"]
    _check_tta_run(args, out, result)


def _check_tta_run(args, out, plain):
    """--tta flip re-scores without training, records the mode, and keeps the plain scores."""
    kept = {k: (out / f"fold{k}" / "cv_scores.json").read_bytes() for k in range(3)}
    summary = {name: (out / name).read_bytes() for name in ("cv.json", "cv.txt")}
    flipped = subprocess.run(list(map(str, args + ["--tta", "flip"])), capture_output=True, text=True, timeout=600)
    assert flipped.returncode == 0, flipped.stderr
    assert "training from" not in flipped.stdout and "test-time mirroring: flip" in flipped.stdout
    copy = json.loads((out / "cv-tta-flip.json").read_text())
    assert copy["tta"] == "flip" and plain["tta"] == "none" and (out / "cv-tta-flip.txt").is_file()
    assert {name: (out / name).read_bytes() for name in summary} == summary  # the plain run's files stay
    for k in range(3):
        assert (out / f"fold{k}" / "cv_scores.json").read_bytes() == kept[k]
        scores = json.loads((out / f"fold{k}" / "cv_scores-tta-flip.json").read_text())
        before = json.loads(kept[k])
        # The segmenter that scored the fold recorded its mode (what mirroring changes is
        # tests/runtime/test_tta.py's to check; this one-epoch model may not show it).
        assert (scores["tta"], before["tta"]) == ("flip", "none")
        assert [s["case_id"] for s in scores["slices"]] == [s["case_id"] for s in before["slices"]]


def _check_crossfit(out, result):
    """Each fold scored again through the Segmenter with its cross-fitted filters gives, per class,
    the Dice its unfiltered predictions gave under the same candidate (cv_scores.json)."""
    from edgeseg.runtime.postprocess_options import SLICE_CANDIDATES

    crossfit = result["postprocess_crossfit"]
    assert [c["fold"] for c in crossfit["choices"]] == [0, 1, 2] and crossfit["slices"] == 6
    names = {1: "faint", 2: "bright"}
    for choice, row in zip(crossfit["choices"], crossfit["per_fold"]):
        slices = json.loads((out / f"fold{choice['fold']}" / "cv_scores.json").read_text())["slices"]
        rules = {int(c): rule for c, rule in choice["postprocess"]["classes"].items()}
        index = {c: SLICE_CANDIDATES.index((r["keep_largest"], r["min_pixels"])) for c, r in rules.items()}
        for c, name in names.items():
            givers = [g for g, r in rules.items() if r.get("removed_to") == c]
            if not givers:
                want = [s["candidates"][name][index.get(c, 0)] for s in slices]
            elif c not in rules:  # unfiltered, receiving the other class's removed pixels
                want = [s["candidates_given"][names[givers[0]]][name][index[givers[0]]] for s in slices]
            else:
                continue  # filtered and receiving: no single stored candidate to compare with
            assert row[name] == pytest.approx(sum(want) / len(want))
    assert "cross-fitted" in (out / "cv.txt").read_text()


def test_ctrl_c_between_the_renames_of_the_cv_summary_leaves_one_whole_set(tmp_path, lesion_slices):
    """cv.json and cv.txt land together: a Ctrl-C between their renames (a run that resumes
    without training writes both again) left this run's scores beside an earlier run's table."""
    from tests.interrupting import assert_whole_set, interrupted_between_renames, snapshot, stopped_once

    out = tmp_path / "cv"
    args = ["cv", "--data", lesion_slices(4, seed=2), "--out", out, "--folds", 2, "--case-pattern", "file",
            "--labels", "faint=1,bright=2", "--window", "0,255", "--size", 32, "--base", 4, "--depth", 2,
            "--epochs", 1, "--batch-size", 2, "--amp", "off", "--threads", 1, "--quiet"]
    first = subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr
    outputs = [out / "cv.json", out / "cv.txt"]
    before = snapshot(outputs)
    stopped_once(interrupted_between_renames(outputs, *args))
    assert_whole_set(outputs, before)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".cv")]  # nothing staged left
