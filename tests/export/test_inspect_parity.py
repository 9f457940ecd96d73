"""`inspect` checks parity.json instead of showing it: its rows must be this bundle's artifacts'
(file, format, precision and sha256), cover every artifact, and pass or fail as their own numbers say."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgeseg.runtime.manifest import read_manifest


def inspect(bundle):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "inspect", str(bundle)], capture_output=True, text=True,
                          timeout=300)


def edit_parity(bundle, change) -> dict:
    path = bundle / "parity.json"
    parity = json.loads(path.read_text())
    change(parity)
    path.write_text(json.dumps(parity, indent=1))
    return parity


@pytest.fixture
def copy(exported_bundle, tmp_path):
    return shutil.copytree(exported_bundle, tmp_path / "bundle")


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """Another model's bundle with the test bundle's artifact files (model.ts, model.onnx,
    model.int8.onnx): a tiny U-Net trained one epoch and exported like the test bundle."""
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    root = tmp_path_factory.mktemp("other")
    train(TrainConfig(out=str(root / "train"), data="phantom:cases=3,size=32,slices=8", size=32, base=4, depth=2,
                      epochs=1, batch_size=4, seed=3), progress=False)
    settings = ExportSettings(int8=True, calib_slices=16, verify_slices=8, max_batch=2, max_dice_drop={"int8": 1.0})
    export_bundle(root / "train" / "best.pt", root / "bundle", settings, calib="phantom:cases=2,size=32,slices=8,seed=5",
                  cache_dir=root / "cache", progress=False, echo=lambda text: None)
    return root / "bundle"


def test_each_row_records_the_sha256_of_the_file_it_measured(exported_bundle):
    parity = json.loads((exported_bundle / "parity.json").read_text())
    for row in parity["results"]:
        assert row["sha256"] == hashlib.sha256((exported_bundle / row["file"]).read_bytes()).hexdigest(), row["key"]


def test_a_row_whose_drop_exceeds_its_limit_but_says_pass_fails_inspect_naming_it(copy, assert_one_line_error):
    def worsen(parity):
        row = next(r for r in parity["results"] if r["key"] == "onnx-int8" and r["run_on"] == "onnxruntime-cpu")
        row["dice_drop"] = round(row["limit"] * 10, 4)  # ten times the limit, still marked as passed
        assert row["passed"] is True

    edit_parity(copy, worsen)
    proc = inspect(copy)
    limit = json.loads((copy / "parity.json").read_text())["thresholds"]["int8"]
    assert_one_line_error(proc, f"parity row onnx-int8 on onnxruntime-cpu records pass yes, but its own numbers fail: "
                                f"dice drop {limit * 10:.4f} > limit {limit:g}")
    assert "failed 1 check(s)" in proc.stderr  # the untouched rows still agree with their numbers


def test_a_class_drop_over_the_limit_is_not_hidden_by_an_edited_dice_drop(copy, assert_one_line_error):
    def hide(parity):
        row = next(r for r in parity["results"] if r["key"] == "onnx-int8" and r["run_on"] == "onnxruntime-cpu")
        name = sorted(row["class_drop"])[0]
        row["class_drop"][name] = 0.5  # dice_drop, the worst class's drop, left as it was
        return name

    names = []
    edit_parity(copy, lambda parity: names.append(hide(parity)))
    assert_one_line_error(inspect(copy), f"parity row onnx-int8 on onnxruntime-cpu records pass yes, but its own "
                                         f"numbers fail: class {names[0]}'s drop 0.5000 > limit")


def test_a_limit_raised_above_the_reports_threshold_fails(copy, assert_one_line_error):
    def loosen(parity):
        for row in parity["results"]:
            if row["key"] == "onnx-int8":
                row["dice_drop"], row["limit"] = 0.5, 0.6

    threshold = edit_parity(copy, loosen)["thresholds"]["int8"]
    assert_one_line_error(inspect(copy), f"parity row onnx-int8 on onnxruntime-cpu: limit 0.6 is not the report's int8 "
                                         f"threshold {threshold}")


def test_an_artifact_without_a_parity_row_fails_naming_it(copy, assert_one_line_error):
    edit_parity(copy, lambda p: p.update(results=[r for r in p["results"] if r["file"] != "model.int8.onnx"]))
    assert_one_line_error(inspect(copy), "onnx-int8 (model.int8.onnx) has no parity row")


def test_a_report_copied_from_another_bundle_fails_on_every_row(copy, other_bundle, assert_one_line_error):
    """Same artifact files, another model: only the recorded sha256 tells the rows are not these
    files'; each row is named with both hashes (checked here against the files themselves)."""
    shutil.copy(other_bundle / "parity.json", copy / "parity.json")
    rows = json.loads((copy / "parity.json").read_text())["results"]
    proc = inspect(copy)
    assert_one_line_error(proc, f"failed {len(rows)} check(s)")
    for row in rows:
        theirs = hashlib.sha256((other_bundle / row["file"]).read_bytes()).hexdigest()
        ours = hashlib.sha256((copy / row["file"]).read_bytes()).hexdigest()
        assert theirs != ours
        assert (f"parity row {row['key']} on {row['run_on']} measured {row['file']} with sha256 {theirs[:12]}..., "
                f"the manifest's {row['file']} has {ours[:12]}...") in proc.stderr


def test_rows_for_an_artifact_the_bundle_lacks_fail(other_bundle, tmp_path, assert_one_line_error):
    bundle = shutil.copytree(other_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["file"] != "model.int8.onnx"]
    manifest["calibration"] = None
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "model.int8.onnx").unlink()
    assert read_manifest(bundle).artifacts  # a valid manifest of the other two
    assert_one_line_error(inspect(bundle), "parity row onnx-int8 on onnxruntime-cpu is for 'model.int8.onnx', which "
                                           "the manifest does not list")


def test_a_failed_row_the_manifest_does_not_exclude_from_auto_fails(copy, assert_one_line_error):
    def fail_openvino(parity):
        row = next(r for r in parity["results"] if r["key"] == "onnx-fp32" and r["run_on"] == "openvino-cpu")
        row["changed_decided_pixels"], row["passed"] = 7, False

    edit_parity(copy, fail_openvino)
    assert "openvino" not in read_manifest(copy).artifact("onnx", "fp32").excluded
    assert_one_line_error(inspect(copy), "onnx-fp32 on openvino-cpu failed the gate, but the manifest does not exclude "
                                         "openvino from auto on model.onnx")


def test_an_older_report_without_sha256_passes_with_a_note(copy):
    edit_parity(copy, lambda p: [r.pop("sha256") for r in p["results"]])
    proc = inspect(copy)
    assert proc.returncode == 0, proc.stderr
    assert "note: parity.json records no artifact sha256" in proc.stdout


def test_the_recomputed_verdict_is_the_gates_own():
    """row_verdict on rows compare_logits made (the gate itself) gives their recorded verdict,
    for FP32 and INT8 rows, passing and failing, by drop and by lost structure."""
    from edgeseg.export.audit import row_verdict
    from edgeseg.export.verify import compare_logits

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    reference[:, 1, 4:20, 4:20] += 6.0  # a structure of class 1 on every slice
    verdicts = []
    for scale in (0.0, 0.05, 0.5, 3.0):
        noisy = reference + rng.normal(scale=scale, size=reference.shape).astype(np.float32)
        for precision, limit in (("fp32", 0.0), ("int8", 0.01), ("int8", 0.2)):
            row = compare_logits(reference, noisy, None, precision, limit, ["bg", "a", "b"])
            row["precision"] = precision
            assert row_verdict(json.loads(json.dumps(row)))[0] is row["passed"], (scale, precision, limit)
            verdicts.append(row["passed"])
    erased = reference.copy()
    erased[1, 1] -= 20.0  # class 1 leaves slice 1: a structure the gate refuses at any limit
    row = compare_logits(reference, erased, None, "int8", 1.0, ["bg", "a", "b"], structure_px=16)
    row["precision"] = "int8"
    assert row["passed"] is False and row["dice_drop"] <= 1.0 and row_verdict(row)[0] is False
    assert set(verdicts) == {True, False}  # the noise levels gave passing and failing rows both


def test_a_row_of_the_first_structure_gate_fails_by_its_lost_structures():
    """Bundles exported between the first structure gate (cdf8926) and gate v2 record
    ``lost_structures``; any entry failed the row, which an older inspect must read so."""
    from edgeseg.export.audit import row_verdict

    row = {"finite": True, "precision": "int8", "dice_drop": 0.001, "class_drop": {"liver": 0.002}, "limit": 0.01,
           "structure_px": 16, "passed": False,
           "lost_structures": [{"class": "liver", "slice": 3, "case": "case_001", "pixels": 40}]}
    ok, why = row_verdict(row)
    assert ok is False and "1 structure change(s) that fail the gate" in why
    row.update(lost_structures=[], passed=True)
    assert row_verdict(row)[0] is True
