"""``edgeseg gate`` on a deployment machine without torch or the checkpoint: the reference is the
bundle's FP32 ONNX graph on ONNX Runtime CPU (which the export's gate passed against PyTorch).
Each gate runs in a process where torch cannot be imported, on the test bundle with its OpenVINO
rows and verdicts taken out (as if OpenVINO had not been installed where it was exported). The
oracle is the rows the export's own gate wrote against the PyTorch model: the rows scored again
against ONNX Runtime come back with the same verdicts and near-identical figures."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

pytest.importorskip("openvino")
REMOVED = {"model.onnx", "model.int8.onnx"}


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _without_openvino(exported_bundle, folder):
    """A copy of the test bundle whose parity.json and manifest hold no OpenVINO row or verdict;
    returns the removed rows (the torch gate's, the oracle)."""
    bundle = shutil.copytree(exported_bundle, folder)
    parity = json.loads((bundle / "parity.json").read_text())
    removed = {r["file"]: r for r in parity["results"] if r.get("runner") == "openvino"}
    assert set(removed) == REMOVED
    parity["results"] = [r for r in parity["results"] if r.get("runner") != "openvino"]
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        artifact["scored"] = [name for name in artifact["scored"] if name != "openvino"]
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return bundle, removed


def _auto_choice(bundle, monkeypatch, tmp_path):
    """``auto``'s pick by its fixed order (OpenVINO INT8 before ONNX Runtime INT8), and its log."""
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.selection import select_runner

    monkeypatch.setenv("EDGESEG_BACKEND_PROBE", "0")
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    runner = select_runner(bundle, read_manifest(bundle), "auto")
    runner.close()
    return f"{runner.name}:{runner.entry.precision}"


def test_gate_without_torch_scores_against_the_onnx_graph(exported_bundle, tmp_path, python_without, monkeypatch,
                                                          caplog):
    bundle, oracle = _without_openvino(exported_bundle, tmp_path / "bundle")
    with caplog.at_level(logging.INFO, logger="edgeseg.runtime.selection"):
        assert _auto_choice(bundle, monkeypatch, tmp_path) == "onnxruntime:int8"
    assert "skips openvino:int8" in caplog.text

    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reference: model.onnx on ONNX Runtime CPU (without --checkpoint)" in proc.stdout

    parity = json.loads((bundle / "parity.json").read_text())
    rows = {r["file"]: r for r in parity["results"] if r.get("runner") == "openvino"}
    assert set(rows) == REMOVED
    for file, expected in oracle.items():
        got = rows[file]
        assert got["reference"] == "onnxruntime-fp32-cpu" and got["sha256"] == expected["sha256"]
        assert got["passed"] == expected["passed"] is True
        # The artifact against the labels does not depend on the reference: the same slices give the same Dice.
        assert got["dice_gt"] == expected["dice_gt"]
        # ONNX Runtime's FP32 logits are the PyTorch model's within a few 1e-6 (the export's own row).
        assert got["dice_gt_fp32"] == pytest.approx(expected["dice_gt_fp32"], abs=1e-3)
        for key in ("max_abs", "p99_abs"):
            assert got[key] == pytest.approx(expected[key], abs=1e-4), key
        assert got["dice_drop"] == pytest.approx(expected["dice_drop"], abs=2e-3)
        assert abs(got["changed_pixels"] - expected["changed_pixels"]) <= 4
        if got["precision"] == "fp32":
            assert got["changed_decided_pixels"] == 0
    run = parity["rescored"][-1]
    assert run["reference"] == "onnxruntime-fp32-cpu" and "checkpoint_sha256" not in run
    export_row = next(r for r in parity["results"] if r["file"] == "model.onnx" and r.get("runner") == "onnxruntime")
    assert run["reference_link"]["against"] == "pytorch-fp32-eager-cpu"
    assert run["reference_link"]["sha256"] == export_row["sha256"]
    assert run["reference_link"]["max_abs"] == export_row["max_abs"]
    assert (run["data"], run["cases"], run["slices"]) == (parity["data"], parity["cases"], parity["slices"])
    assert run["slice_ids"] == parity["held_out"]["slice_ids"]  # the export's own slices, not drawn again

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [a["scored"] for a in manifest["artifacts"]][1:] == [["onnxruntime", "openvino"]] * 2
    assert _auto_choice(bundle, monkeypatch, tmp_path) == "openvino:int8"

    proc = python_without(["-m", "edgeseg", "inspect", str(bundle)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("against onnxruntime-fp32-cpu: model.onnx, which the export's gate passed against "
            "pytorch-fp32-eager-cpu") in proc.stdout
    # Each row of the table says what it was scored against: the export's rows PyTorch, the new ones ONNX Runtime.
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("parity vs pytorch-fp32-eager-cpu"))
    assert "rows against onnxruntime-fp32-cpu say so under 'against'" in lines[header]
    assert lines[header + 1].split()[-1] == "against" and lines[header + 1].split().count("against") == 1
    table = lines[header + 3:header + 3 + len(parity["results"])]
    assert sorted((line.split()[0], line.split()[-1]) for line in table) == sorted(
        (r["key"], r.get("reference", "pytorch-fp32-eager-cpu")) for r in parity["results"])
    assert [line.split()[-1] for line in table].count("onnxruntime-fp32-cpu") == len(REMOVED)
    proc = python_without(["-m", "edgeseg", "inspect", str(bundle), "--json", str(tmp_path / "inspect.json")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the JSON passes parity.json on as the file has it (docs/export.md): the rows scored without
    # torch name their reference there, the others are against the report's
    report = json.loads((tmp_path / "inspect.json").read_text())["parity"]["report"]
    assert report == parity and report["reference"] == "pytorch-fp32-eager-cpu"
    assert [r.get("reference", report["reference"]) for r in report["results"]].count("onnxruntime-fp32-cpu") \
        == len(REMOVED)


def test_gate_without_torch_needs_held_out_data_it_can_read(exported_bundle, tmp_path, python_without,
                                                            assert_one_line_error):
    """The export's data is not on the deployment machine: without --verify-data, one line and a
    non-zero exit, and not a byte of the bundle changes; with it, the runners are scored."""
    bundle, _ = _without_openvino(exported_bundle, tmp_path / "bundle")
    parity = json.loads((bundle / "parity.json").read_text())
    data = parity["data"]
    parity["data"] = str(tmp_path / "export-machine" / "slices")
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    before = _digests(bundle)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert_one_line_error(proc, "edgeseg gate without torch or --checkpoint needs --verify-data DATA: the export's "
                                f"held-out data {parity['data']} is not found here")
    assert _digests(bundle) == before

    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--verify-data", data, "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [r for r in json.loads((bundle / "parity.json").read_text())["results"] if r.get("runner") == "openvino"]
    assert {r["file"] for r in rows} == REMOVED and all(r["passed"] for r in rows)


def test_a_checkpoint_without_torch_falls_back_to_the_onnx_reference(exported_bundle, trained_checkpoint, tmp_path,
                                                                     python_without):
    bundle, _ = _without_openvino(exported_bundle, tmp_path / "bundle")
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--checkpoint", str(trained_checkpoint),
                           "--backend", "openvino:int8", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "reference: model.onnx on ONNX Runtime CPU (torch is not installed here)" in proc.stdout
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["rescored"][-1]["runners"] == {"model.int8.onnx": ["openvino"]}


@pytest.mark.parametrize("unlinked", ["row gone", "row of other bytes", "excluded in the manifest"])
def test_the_reference_must_be_the_graph_the_export_passed(exported_bundle, tmp_path, python_without,
                                                           assert_one_line_error, unlinked):
    """No link to PyTorch (the FP32 graph's ONNX Runtime row is gone, is of a graph of other bytes
    than the manifest lists, or the manifest excludes ONNX Runtime for that graph whatever its row
    says): refused, bundle unchanged."""
    bundle, _ = _without_openvino(exported_bundle, tmp_path / "bundle")
    if unlinked.startswith("row"):
        parity = json.loads((bundle / "parity.json").read_text())
        (row,) = [r for r in parity["results"] if r["file"] == "model.onnx" and r.get("runner") == "onnxruntime"]
        if unlinked == "row gone":
            parity["results"].remove(row)
        else:  # the row of a model.onnx exported before this one
            row["sha256"] = hashlib.sha256(b"another graph").hexdigest()
        (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    else:
        manifest = json.loads((bundle / "manifest.json").read_text())
        (fp32,) = [a for a in manifest["artifacts"] if a["file"] == "model.onnx"]
        fp32["excluded"] = {"onnxruntime": "masks differ from the PyTorch model's"}
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    before = _digests(bundle)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert_one_line_error(proc, "parity.json records no passed check of model.onnx")
    assert _digests(bundle) == before


def test_a_bundle_without_the_held_out_record_says_its_slices_are_drawn_again(exported_bundle, tmp_path,
                                                                               python_without, assert_one_line_error):
    """Exported before parity.json recorded ``held_out``, with the agreement metric: labels that are
    class indices 0..1 are scored, and the command says the slices may not be the export's; the
    phantom's own labels (spine 2, kidney 3 beside the liver 1) are refused, their mapping unknown."""
    import nibabel as nib
    import numpy as np

    from edgeseg.data.phantom import write_phantom_dataset

    bundle, _ = _without_openvino(exported_bundle, tmp_path / "bundle")
    parity = json.loads((bundle / "parity.json").read_text())
    parity.pop("held_out", None)
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    before = _digests(bundle)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert_one_line_error(proc, "has label value 3, not a class index 0..1")
    assert _digests(bundle) == before

    data = write_phantom_dataset(tmp_path / "liver", cases=2, seed=11, shape=(16, 64, 64))
    for path in (data / "labelsTr").glob("*.nii.gz"):
        label = nib.load(path)
        nib.save(nib.Nifti1Image((np.asarray(label.dataobj) == 1).astype(np.uint8), label.affine), path)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--verify-data", str(data), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ("parity.json records no held-out slices or label mapping (exported before edgeseg recorded them): "
            "labels read as class i = value i, and the slices drawn again, perhaps not the export's") in proc.stdout
    assert "not the export's unrecorded ones" in proc.stdout
    rows = [r for r in json.loads((bundle / "parity.json").read_text())["results"] if r.get("runner") == "openvino"]
    assert {r["file"] for r in rows} == REMOVED
