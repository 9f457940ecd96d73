"""``edgeseg gate`` without torch reads the export's held-out slices as the export read them.

The bundle: the suite's trained checkpoint, its label mapping recorded as liver = 255 (the mask
value of the data below), exported with the truth gate metric on phantom cases whose label maps
hold 0 and 255. Read as class i = value i, those labels have no liver, and an artifact that
erases the liver everywhere would lose nothing against them. That artifact is an ONNX graph
built here (logits favouring background at every pixel), listed as the bundle's INT8 graph with
no verdict, as a runner installed after the export would find it. The oracles are the label
files themselves (read with nibabel) and the export's own record of its slices.
"""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
nib = pytest.importorskip("nibabel")
LIVER = 1  # the phantom's label value of the liver, the test checkpoint's one class


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _erasing_graph(size: int) -> bytes:
    """image [N, 1, size, size] -> logits [N, 2, size, size]: background 1, liver 0 everywhere."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 1, 1], [0.0, 0.0])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [2], [1.0, 0.0])
    node = helper.make_node("Conv", ["image", "w", "b"], ["logits"])
    graph = helper.make_graph([node], "erase", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                             ["N", 1, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, size, size])],
                              initializer=[weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _add_erasing_graph(bundle):
    """The erasing graph listed as ``bundle``'s INT8 graph, with no verdict."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    graph = _erasing_graph(manifest["spec"]["size"][0])
    (bundle / "model.int8.onnx").write_bytes(graph)
    manifest["artifacts"].append({"file": "model.int8.onnx", "format": "onnx", "precision": "int8",
                                  "sha256": hashlib.sha256(graph).hexdigest(), "bytes": len(graph),
                                  "fingerprint": None, "extra": {}, "scored": []})
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@pytest.fixture(scope="module")
def mask_255_bundle(trained_checkpoint, tmp_path_factory):
    """(bundle, data): the 0/255 bundle described above and its held-out NIfTI data."""
    import torch

    from edgeseg.data.phantom import write_phantom_dataset
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    root = tmp_path_factory.mktemp("mask255")
    data = write_phantom_dataset(root / "data", cases=2, seed=11, shape=(16, 64, 64))
    for path in (data / "labelsTr").glob("*.nii.gz"):
        label = nib.load(path)
        values = np.asarray(label.dataobj)
        nib.save(nib.Nifti1Image(np.where(values == LIVER, 255, 0).astype(np.uint8), label.affine), path)
    payload = torch.load(trained_checkpoint, weights_only=True)
    payload["label_values"] = {payload["class_names"][1]: [255]}
    torch.save(payload, root / "mask255.pt")
    export_bundle(root / "mask255.pt", root / "bundle", ExportSettings(formats=("onnx",), gate_metric="truth",
                                                                       verify_slices=16, max_batch=4),
                  verify_data=str(data), progress=False, echo=lambda text: None)
    bundle = root / "bundle"
    _add_erasing_graph(bundle)
    return bundle, data


def _copy(mask_255_bundle, tmp_path):
    return shutil.copytree(mask_255_bundle[0], tmp_path / "bundle")


def _liver_slices(data) -> set[tuple[str, int]]:
    """(case, slice number) of every slice whose label file holds the liver value 255."""
    found = set()
    for path in (data / "labelsTr").glob("*.nii.gz"):
        values = np.asarray(nib.load(path).dataobj)
        case = path.name[: -len(".nii.gz")]
        found |= {(case, int(z)) for z in range(values.shape[-1]) if (values[..., z] == 255).any()}
    return found


def test_an_erasing_runner_fails_on_labels_stored_as_255(mask_255_bundle, tmp_path, python_without):
    bundle = _copy(mask_255_bundle, tmp_path)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "model.int8.onnx on onnxruntime: excluded from auto" in proc.stdout
    parity = json.loads((bundle / "parity.json").read_text())
    row = next(r for r in parity["results"] if r["file"] == "model.int8.onnx")
    assert row["reference"] == "onnxruntime-fp32-cpu" and row["passed"] is False
    # The artifact's liver Dice against the labels is 0: the drop is the FP32 graph's whole liver Dice.
    assert row["worst_class"] == "liver" and row["dice_drop"] > 0.5
    assert [f for f in row["structure_changes"] if f["kind"] == "erased"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["file"] == "model.int8.onnx")
    assert "onnxruntime" in entry["excluded"]


def test_the_gate_takes_the_export_s_recorded_slices(mask_255_bundle, tmp_path, python_without):
    bundle = _copy(mask_255_bundle, tmp_path)
    record = json.loads((bundle / "parity.json").read_text())["held_out"]
    assert record["read_as"]["label_values"] == {"liver": [255]}
    recorded = {(case, n) for case, n in record["slice_ids"]}
    # The export drew half its slices with the liver, by the recorded mapping (the label files say which).
    assert len(recorded & _liver_slices(mask_255_bundle[1])) == len(recorded) // 2
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "not the export's" not in proc.stdout
    run = json.loads((bundle / "parity.json").read_text())["rescored"][-1]
    assert run["slice_ids"] == record["slice_ids"]


def test_slices_that_are_not_there_are_refused(mask_255_bundle, tmp_path, python_without, assert_one_line_error):
    bundle = _copy(mask_255_bundle, tmp_path)
    parity = json.loads((bundle / "parity.json").read_text())
    case, number = parity["held_out"]["slice_ids"][-1]
    parity["held_out"]["slice_ids"][-1] = [case, number + 1000]  # a slice the data does not have
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    before = _digests(bundle)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert_one_line_error(proc, f"does not hold the export's held-out case {case} slice {number + 1000}")
    assert _digests(bundle) == before


@pytest.mark.parametrize("metric, message", [
    ("truth", "the truth gate metric judges against the labels"),
    ("agreement", "has label value 255, not a class index 0..1")])
def test_a_bundle_without_the_record_is_refused(mask_255_bundle, tmp_path, python_without, assert_one_line_error,
                                                metric, message):
    """Exported before the record: the mapping is unknown, and these labels are not class indices."""
    bundle = _copy(mask_255_bundle, tmp_path)
    parity = json.loads((bundle / "parity.json").read_text())
    parity.pop("held_out", None)  # absent from bundles exported before it was recorded
    parity["gate_metric"] = metric
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    before = _digests(bundle)
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet"], tmp_path)
    assert_one_line_error(proc, message)
    assert "run edgeseg gate where torch is installed, with --checkpoint" in proc.stderr
    assert _digests(bundle) == before


def _with_torch(bundle, checkpoint, tmp_path, python_without, *args):
    """``edgeseg gate BUNDLE --checkpoint CK`` where torch is installed (the PyTorch reference)."""
    return python_without(["-m", "edgeseg", "gate", str(bundle), "--checkpoint", str(checkpoint), "--quiet", *args],
                          tmp_path, ())


@pytest.fixture(scope="module")
def training_data_bundle(trained_checkpoint, tmp_path_factory):
    """A bundle exported with the checkpoint's own training data as --verify-data (all its cases,
    not only the validation ones), with the erasing graph listed as its INT8 graph."""
    import torch

    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    data = torch.load(trained_checkpoint, weights_only=True)["train_config"]["data"]
    bundle = tmp_path_factory.mktemp("trained-on") / "bundle"
    export_bundle(trained_checkpoint, bundle, ExportSettings(formats=("onnx",), verify_slices=16, max_batch=4),
                  verify_data=str(data), progress=False, echo=lambda text: None)
    _add_erasing_graph(bundle)
    return bundle


def test_the_torch_gate_takes_the_slices_of_an_export_on_its_training_data(training_data_bundle, trained_checkpoint,
                                                                           tmp_path, python_without):
    """The export drew its slices from every case of the training data, not only the validation
    cases: the gate with the checkpoint reads those cases again and takes exactly those slices."""
    import torch

    bundle = shutil.copytree(training_data_bundle, tmp_path / "bundle")
    parity = json.loads((bundle / "parity.json").read_text())
    val = set(torch.load(trained_checkpoint, weights_only=True)["split"]["val"])
    assert {case for case, _ in parity["held_out"]["slice_ids"]} - val  # slices outside the validation cases
    proc = _with_torch(bundle, trained_checkpoint, tmp_path, python_without)
    assert proc.returncode == 0, proc.stderr
    assert "not the export's" not in proc.stdout
    run = json.loads((bundle / "parity.json").read_text())["rescored"][-1]
    assert run["reference"] == "pytorch-fp32-eager-cpu"
    assert run["slice_ids"] == parity["held_out"]["slice_ids"] and run["cases"] == parity["cases"]


def test_the_torch_gate_refuses_labels_that_changed(mask_255_bundle, tmp_path, python_without,
                                                    assert_one_line_error):
    """A held-out slice's liver erased in the label file since the export: the labels read are not
    the ones the export's gate saw, and the gate with the checkpoint refuses, as without torch."""
    bundle, data = _copy(mask_255_bundle, tmp_path), shutil.copytree(mask_255_bundle[1], tmp_path / "data")
    parity = json.loads((bundle / "parity.json").read_text())
    case, number = next((c, n) for c, n in parity["held_out"]["slice_ids"] if (c, n) in _liver_slices(data))
    path = data / "labelsTr" / f"{case}.nii.gz"
    label = nib.load(path)
    values = np.asarray(label.dataobj).copy()
    values[..., number] = 0
    nib.save(nib.Nifti1Image(values, label.affine), path)
    parity["data"] = str(data)
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    before = _digests(bundle)
    proc = _with_torch(bundle, mask_255_bundle[0].parent / "mask255.pt", tmp_path, python_without)
    assert_one_line_error(proc, "read here are not the ones its gate saw")
    assert _digests(bundle) == before


@pytest.mark.parametrize("torch_here", [False, True])
def test_another_intensity_on_the_export_s_slices_is_refused(trained_checkpoint, tmp_path, python_without,
                                                             assert_one_line_error, torch_here):
    """The recorded labels' sha256 does not cover the images: on a slice folder, --intensity other
    than the one the export read its slices with judged other pixels as the export's slices."""
    from PIL import Image

    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    data, bundle, rng = tmp_path / "slices", tmp_path / "bundle", np.random.default_rng(3)
    for kind in ("images", "masks"):
        (data / kind).mkdir(parents=True)
    for case, number in ((c, n) for c in ("a", "b") for n in range(4)):  # a bright square on each slice
        image, mask = rng.normal(40, 4, (64, 64)), np.zeros((64, 64), np.uint8)
        mask[20:40, 16 + 4 * number:36 + 4 * number] = 1
        image[mask == 1] = 200
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(data / "images" / f"{case}_{number}.png")
        Image.fromarray(mask).save(data / "masks" / f"{case}_{number}.png")
    export_bundle(trained_checkpoint, bundle, ExportSettings(formats=("onnx",), verify_slices=4, max_batch=4),
                  verify_data=str(data), progress=False, echo=lambda text: None)
    _add_erasing_graph(bundle)
    before = _digests(bundle)
    args = ["--intensity", "hu-clipped:-100,400"]
    proc = (_with_torch(bundle, trained_checkpoint, tmp_path, python_without, *args)
            if torch_here else python_without(["-m", "edgeseg", "gate", str(bundle), "--quiet", *args], tmp_path))
    assert_one_line_error(proc, "--intensity hu-clipped:-100,400 is not the intensity the export read")
    assert _digests(bundle) == before


def test_a_bundle_without_the_record_refuses_the_first_value_past_its_classes(exported_bundle, tmp_path,
                                                                              python_without, assert_one_line_error):
    """A model of 2 classes (0, 1) given --verify-data whose labels hold 0, 1 and 2: 2 is no class
    index, and without the record's mapping the gate cannot know what it stands for (the oracle:
    the label values written, read back with nibabel)."""
    from edgeseg.data.phantom import write_phantom_dataset
    from tests.export.test_gate_without_torch import _without_openvino

    bundle, _ = _without_openvino(exported_bundle, tmp_path / "bundle")  # a row to score
    parity = json.loads((bundle / "parity.json").read_text())
    parity.pop("held_out", None)
    parity["gate_metric"] = "agreement"
    (bundle / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    data = write_phantom_dataset(tmp_path / "data", cases=1, seed=5, shape=(8, 64, 64))
    for path in (data / "labelsTr").glob("*.nii.gz"):
        label = nib.load(path)
        nib.save(nib.Nifti1Image(np.minimum(np.asarray(label.dataobj), 2).astype(np.uint8), label.affine), path)
        assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) == {0, 1, 2}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert len(manifest["labels"]) == 2
    proc = python_without(["-m", "edgeseg", "gate", str(bundle), "--verify-data", str(data), "--quiet"], tmp_path)
    assert_one_line_error(proc, "has label value 2, not a class index 0..1")
