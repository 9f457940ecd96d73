"""`edgeseg cv --int8` on a tiny chest-phantom cross-validation (2 folds): each fold's last.pt
exported through the gate with calibration on its training cases only, the accepted INT8
backends scored on the held-out slices (checked against the bundle run here and Dice in numpy),
resumed without exporting again, and a gate refusal reported as such."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.guarded_cli import GuardedCliRunner

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

DATA = "chest-phantom:cases=4,size=48,slices=8,seed=0"
CLASSES = {"ggo": 1, "consolidation": 2}


def _cv(out, limit: float, *extra, exit_code: int = 0) -> str:
    from edgeseg.cli.main import cli

    args = ["cv", "--data", DATA, "--out", out, "--folds", 2, "--labels", "ggo=1,consolidation=2", "--window=-1000,200",
            "--size", 32, "--base", 8, "--depth", 2, "--epochs", 10, "--lr", 5e-3, "--no-augment", "--batch-size", 8,
            "--amp", "off", "--threads", 1, "--quiet", "--int8", "--max-dice-drop-int8", limit, *extra]
    result = GuardedCliRunner().invoke(cli, list(map(str, args)))
    assert result.exit_code == exit_code, (result.output, result.exception)
    return result.output


def _numpy_dice(p: np.ndarray, t: np.ndarray) -> float:
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


def _scipy_filter(labels: np.ndarray, postprocess: dict, model_size: tuple[int, int]) -> np.ndarray:
    """The cross-fitted per-slice filters on one slice's labels, from scipy's 8-connected labels,
    min_pixels scaled by the area ratio to the slice's size, removed pixels given to removed_to."""
    from scipy import ndimage

    out = labels.copy()
    ratio = labels.size / (model_size[0] * model_size[1])
    for c, rule in postprocess.get("classes", {}).items():
        comp, n = ndimage.label(labels == int(c), structure=np.ones((3, 3)))
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        keep = sizes >= (int(np.ceil(rule["min_pixels"] * ratio - 1e-9)) if rule["min_pixels"] else 0)
        if rule["keep_largest"] and n:
            keep &= np.arange(n + 1) == 1 + int(np.argmax(sizes[1:]))
        keep[0] = True
        out[(comp > 0) & ~keep[comp]] = rule.get("removed_to", 0)  # components found on the labels as given
    return out


def _recompute(bundle, backend: str, held_out: list[str], postprocess: dict | None = None) -> list[dict]:
    """Per-slice Dice of the bundle run by the runtime Segmenter here (no filter; then, given
    ``postprocess``, filtered with scipy), Dice counted in numpy."""
    from edgeseg.data import open_dataset
    from edgeseg.runtime.segmenter import Segmenter

    rows = []
    with Segmenter.load(bundle, backend=backend) as seg:
        assert seg.runner.name == backend.split(":")[0] and seg.backend == backend
        assert not seg.postprocess.classes   # no component filter: as the cv scores are taken
        for volume in (v for v in open_dataset(DATA, label_values=[1, 2]) if v.case_id in held_out):
            pred = seg.predict_volume(volume)
            for k in range(volume.num_slices):
                p, t = pred[k], volume.label[k]
                if postprocess is not None:
                    p = _scipy_filter(p, postprocess, seg.spec.size)
                rows.append({"case_id": volume.case_id, "binary": _numpy_dice(p > 0, t > 0),
                             **{name: _numpy_dice(p == c, t == c) for name, c in CLASSES.items()}})
    return rows


@pytest.mark.usefixtures("one_torch_thread")
def test_cv_int8_exports_scores_resumes_and_reports_a_refusal(tmp_path):
    out = tmp_path / "cv"
    first = _cv(out, 1.0)                              # a limit every INT8 graph passes: all backends scored
    assert first.count("fold 0: exporting") == 1 and first.count("fold 1: exporting") == 1
    result = json.loads((out / "cv.json").read_text())
    backends = result["runtime"]["backends"]
    assert "onnxruntime:fp32" in backends and "onnxruntime:int8" in backends
    int8 = [b for b in backends if b.endswith(":int8")]
    flipped = filters = 0
    for fold in (0, 1):
        folder = out / f"fold{fold}" / "int8-entropy-64-max1-cpu"
        split = json.loads((out / f"fold{fold}" / "split.json").read_text())
        # a fold's split is made by the fold count and fold, which it records (not the fractions)
        assert (split["folds"], split["fold"]) == (2, fold) and "fractions" not in split
        split = split.get("split", split)
        held_out, train = set(split["test"]), set(split["train"])
        manifest = json.loads((folder / "bundle" / "manifest.json").read_text())
        # Calibration drew only the fold's training cases (all of them: 16 slices < 64 asked).
        assert set(manifest["calibration"]["case_ids"]) == train and not train & held_out
        assert manifest["calibration"]["excluded_cases"] == len(held_out)
        runtime_scores = json.loads((folder / "runtime_scores.json").read_text())
        for backend in int8:
            expected = _recompute(folder / "bundle", backend, sorted(held_out))
            got = runtime_scores[backend]["slices"]
            assert [s["case_id"] for s in got] == [r["case_id"] for r in expected]
            for metric in ("binary", *CLASSES):
                np.testing.assert_allclose([s[metric] for s in got], [r[metric] for r in expected], atol=1e-12)
                assert backends[backend]["per_fold"][fold][metric] == pytest.approx(np.mean([r[metric] for r in expected]))
                fp32 = result["per_fold"][fold][metric]
                assert backends[backend]["dice_drop"]["per_fold"][fold][metric] == pytest.approx(fp32 - np.mean([r[metric] for r in expected]))
        # The same backends again with the fold's cross-fitted filters, against scipy's filter.
        choice = result["postprocess_crossfit"]["choices"][fold]
        assert choice["fold"] == fold
        kept = json.loads((folder / "runtime_scores_crossfit.json").read_text())
        assert kept["postprocess"] == choice["postprocess"]
        crossfit = result["postprocess_crossfit"]["runtime"]["backends"]
        for backend in int8:
            expected = _recompute(folder / "bundle", backend, sorted(held_out), choice["postprocess"])
            for metric in ("binary", *CLASSES):
                np.testing.assert_allclose([s[metric] for s in kept["scores"][backend]["slices"]],
                                           [r[metric] for r in expected], atol=1e-12)
                assert crossfit[backend]["per_fold"][fold][metric] == pytest.approx(np.mean([r[metric] for r in expected]))
        filters += len(choice["postprocess"]["classes"])
        flipped += sum(row["dice_drop"] > 0 for row in json.loads((folder / "export.json").read_text())["gate"]
                       if row["backend"].endswith(":int8"))
    assert flipped, "INT8 changed no pixel: the refusal below would not be tested"
    assert filters, "no fold chose a filter: the cross-fitted runtime scores above would not be tested"
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("fold*/int8-*/**/*") if p.is_file()}

    again = _cv(out, 1.0)                              # resumed: read back, nothing trained or exported
    assert "training from" not in again and "exporting" not in again and again.count("reading") == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / "cv.json").read_text())["runtime"] == result["runtime"]
    # An export made under an older parity gate (a record from before gates had versions) is
    # exported again through today's and scored again; the other fold is read.
    old = out / "fold1" / "int8-entropy-64-max1-cpu" / "export.json"
    (old.parent / "runtime_scores.json").write_text("{}")  # what the older bundle scored: must not be read
    record = json.loads(old.read_text())
    assert record["gate_version"] == 2 and record["structure_px"] == 16
    old.write_text(json.dumps({k: v for k, v in record.items() if k not in ("gate_version", "structure_px")}))
    regated = _cv(out, 1.0)
    assert "fold 1: exporting" in regated and "was exported under parity gate v1, not today's" in regated
    assert "fold 0: reading" in regated and "training from" not in regated
    assert json.loads(old.read_text())["gate"] == record["gate"]
    assert json.loads((out / "cv.json").read_text())["runtime"] == result["runtime"]
    assert json.loads((old.parent / "runtime_scores.json").read_text()) != {}
    assert {p: p.stat().st_mtime_ns for p in stamps if "fold0" in str(p)} == \
        {p: t for p, t in stamps.items() if "fold0" in str(p)}
    # Scores kept under other filters than the fold's choice are not reused: scored again.
    kept_path = out / "fold0" / "int8-entropy-64-max1-cpu" / "runtime_scores_crossfit.json"
    kept = json.loads(kept_path.read_text())
    kept_path.write_text(json.dumps({"postprocess": {"resize": "logits", "classes": {}}, "scores": {}}))
    _cv(out, 1.0)
    assert json.loads(kept_path.read_text()) == kept
    assert json.loads((out / "cv.json").read_text())["postprocess_crossfit"] == result["postprocess_crossfit"]

    # Each export setting keeps its own copy of cv.json/cv.txt; cv.json is the latest run's.
    lenient = {ext: (out / f"cv-int8-entropy-64-max1-cpu.{ext}").read_text() for ext in ("json", "txt")}
    assert lenient == {ext: (out / f"cv.{ext}").read_text() for ext in ("json", "txt")}
    strict = _cv(out, 0.0)                             # no pixel may change: the gate refuses what flipped any
    assert "training from" not in strict and "REFUSED (limit 0)" in strict
    assert {ext: (out / f"cv-int8-entropy-64-max1-cpu.{ext}").read_text() for ext in ("json", "txt")} == lenient
    assert (out / "cv-int8-entropy-64-max0-cpu.json").read_text() == (out / "cv.json").read_text() != lenient["json"]
    refused = json.loads((out / "cv.json").read_text())["runtime"]
    for fold in refused["gate"]:
        for row in fold["rows"]:
            assert row["passed"] == (row["dice_drop"] <= 0.0), row
    for backend in int8:
        entry = refused["backends"][backend]
        assert [r["fold"] for r in entry["refused"]] == [f for f in (0, 1) if f not in entry["folds"]]
        assert all(r["dice_drop"] > 0 and not r["passed"] for r in entry["refused"])
    assert sum(len(refused["backends"][b]["refused"]) for b in int8) == flipped
    for fold in (0, 1):
        folder = out / f"fold{fold}" / "int8-entropy-64-max0-cpu"
        record = json.loads((folder / "export.json").read_text())
        # A fold refused on every runner has no INT8 bundle; its FP32 ONNX is still scored.
        if record["bundle"] == "bundle-fp32":
            assert not (folder / "bundle").exists() and not (folder / "bundle-fp32" / "model.int8.onnx").exists()
            assert set(record["calibration"]["case_ids"]) <= set(record["split"]["train"])
        assert "onnxruntime:fp32" in json.loads((folder / "runtime_scores.json").read_text())

    # --trained-only trains nothing: a fold short of --epochs is left out and named, and the
    # partial figures go to their own file, never over cv.json.
    full = (out / "cv.json").read_text()
    (out / "fold1" / "last.pt").unlink()
    partial = _cv(out, 1.0, "--trained-only")
    assert "fold 1: at epoch 0 of 10; left out" in partial and "training from" not in partial
    assert not (out / "fold1" / "last.pt").exists() and (out / "cv.json").read_text() == full
    left = json.loads((out / "cv-trained-only.json").read_text())
    assert json.loads((out / "cv-trained-only-int8-entropy-64-max1-cpu.json").read_text()) == left
    assert left["folds_missing"] == [1] and [r["fold"] for r in left["per_fold"]] == [0]
    assert left["runtime"]["backends"]["onnxruntime:int8"]["per_fold"] == result["runtime"]["backends"]["onnxruntime:int8"]["per_fold"][:1]
    nothing = _cv(out, 1.0, "--trained-only", "--epochs", 11, exit_code=2)
    assert "edgeseg: error: no fold" in nothing
