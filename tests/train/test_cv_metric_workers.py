"""``edgeseg cv --metric-workers N``: each fold's held-out cases scored in worker processes beside
the inference, as ``edgeseg evaluate --workers`` scores its cases, give the per-fold results of
one process (``--metric-workers 0``); a negative count is refused before anything is read.
(``--workers`` is train's: the DataLoader's processes.)"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ..conftest import check_one_line_error


def _cv(data, out, *options) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "edgeseg.cli", "cv", "--data", data, "--out", out, "--folds", 2,
            "--case-pattern", "file", "--labels", "faint=1,bright=2", "--window", "0,255", "--size", 32,
            "--base", 4, "--depth", 2, "--epochs", 1, "--batch-size", 2, "--amp", "off", "--quiet", *options]
    return subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600)


def test_the_folds_scored_in_worker_processes_give_the_scores_of_one_process(tmp_path, lesion_slices):
    data, out = lesion_slices(6, seed=5), tmp_path / "cv"
    alone = _cv(data, out, "--metric-workers", 0)
    assert alone.returncode == 0, alone.stderr
    folds = {k: (out / f"fold{k}" / "cv_scores.json").read_text() for k in range(2)}
    summary = json.loads((out / "cv.json").read_text())
    pooled = _cv(data, out, "--metric-workers", 2)  # the folds are trained: only scored again
    assert pooled.returncode == 0, pooled.stderr
    assert "training from" not in pooled.stdout
    for k in range(2):
        again = (out / f"fold{k}" / "cv_scores.json").read_text()
        assert json.loads(again)["slices"] == json.loads(folds[k])["slices"]  # every row, in order
    result = json.loads((out / "cv.json").read_text())
    assert result["per_fold"] == summary["per_fold"] and result["mean"] == summary["mean"]
    assert result["postprocess_crossfit"] == summary["postprocess_crossfit"]
    assert len(json.loads(folds[0])["slices"]) + len(json.loads(folds[1])["slices"]) == 6
    assert any(row["candidates"] for row in json.loads(folds[0])["slices"])  # the candidates were scored too


def test_a_negative_count_is_refused_in_one_line(tmp_path, lesion_slices):
    done = _cv(lesion_slices(4, seed=1), tmp_path / "cv", "--metric-workers", -1)
    check_one_line_error(done, "'--metric-workers': -1 is not in the range x>=0")
    assert not (tmp_path / "cv").exists()


def test_score_fold_refuses_a_negative_count_before_reading_the_checkpoint(tmp_path):
    from edgeseg.errors import EdgesegError
    from edgeseg.evaluate.cross_validation import score_fold

    with pytest.raises(EdgesegError, match=r"^workers must be >= 0 .* got -2$"):
        score_fold(tmp_path / "missing.pt", workers=-2)


def test_the_rows_of_volumes_scored_in_workers_are_those_of_one_process():
    """score_volumes itself, four volumes through two workers (so that volumes wait for a worker):
    the same rows, candidates included, in the order of the volumes."""
    torch = pytest.importorskip("torch")
    from edgeseg.data.volume import Volume, default_affine
    from edgeseg.evaluate.cross_validation import score_volumes
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.spec import PreprocessSpec

    class Levels(torch.nn.Module):
        def forward(self, x):
            one, two = ((x > 0.3) & (x <= 0.6)).float(), (x > 0.6).float()
            return torch.cat([1 - one - two, one, two], 1) * 10

    rng = np.random.default_rng(4)
    volumes = []
    for case in range(4):
        hu = rng.choice([0.0, 120.0, 220.0], size=(3 + case, 40, 36), p=[0.6, 0.2, 0.2]).astype(np.float32)
        label = np.where(rng.random(hu.shape) < 0.8, np.digitize(hu, [100.0, 200.0]), 0).astype(np.uint8)
        volumes.append(Volume(hu=hu, spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)),
                              case_id=f"c{case}", label=label))
    names = ["background", "faint", "bright"]
    spec = PreprocessSpec(window=(0.0, 255.0), size=(20, 18))
    with Segmenter.from_module(Levels().eval(), spec, dict(enumerate(names)), {"keep_largest": False}) as segmenter:
        alone = score_volumes(segmenter, volumes, {"class_names": names}, candidates=True)
        pooled = score_volumes(segmenter, volumes, {"class_names": names}, candidates=True, workers=2)
    assert pooled == alone
    assert [row["case_id"] for row in alone] == [f"c{case}" for case in range(4) for _ in range(3 + case)]
