"""The parity gate fails what differs from FP32 and then writes no bundle."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseg.export.profiles import ExportSettings
from edgeseg.export.verify import ParityError, compare_logits


def test_perturbed_onnx_weights_fail_the_gate_and_leave_no_bundle(checkpoint, tmp_path, monkeypatch):
    import edgeseg.export.onnx_export as onnx_export
    from edgeseg.export.pipeline import export_bundle

    honest = onnx_export.export_onnx

    def perturbed(model, example, spec, labels, path):
        info = honest(model, example, spec, labels, path)
        graph = onnx.load(str(path))
        weights = [t for t in graph.graph.initializer if len(t.dims) == 4]
        rng = np.random.default_rng(0)
        for tensor in weights[:2]:
            array = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(array + rng.normal(0, array.std(), array.shape).astype(array.dtype), tensor.name))
        onnx.save(graph, str(path))
        return info

    monkeypatch.setattr(onnx_export, "export_onnx", perturbed)
    shown = []
    with pytest.raises(ParityError, match="onnx-fp32 on onnxruntime-cpu"):
        export_bundle(checkpoint, tmp_path / "b", ExportSettings(formats=("torchscript", "onnx")), progress=False,
                      echo=shown.append)
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind either
    assert "NO" in shown[0] and "torchscript-fp32" in shown[0]


def test_a_runner_that_fails_the_gate_is_excluded_from_auto_for_that_artifact(checkpoint, tmp_path, monkeypatch):
    from edgeseg.cli.inspect import describe_bundle
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners.openvino import OpenVinoRunner

    honest = OpenVinoRunner._infer
    # A backend that computes wrong numbers: OpenVINO's real logits with the classes swapped.
    monkeypatch.setattr(OpenVinoRunner, "_infer", lambda self, batch: honest(self, batch)[:, ::-1].copy())
    shown = []
    result = export_bundle(checkpoint, tmp_path / "b", ExportSettings(formats=("onnx",)), progress=False,
                           echo=shown.append)
    [entry] = read_manifest(tmp_path / "b").artifacts
    assert set(entry.excluded) == {"openvino"} and "mask pixels differ from FP32" in entry.excluded["openvino"]
    rows = {r["run_on"]: r["passed"] for r in result["parity"]["results"]}
    assert rows == {"onnxruntime-cpu": True, "openvino-cpu": False}
    assert "excluded from auto: openvino on model.onnx" in shown[0]
    assert "openvino (" in describe_bundle(str(tmp_path / "b"))[0]
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    with Segmenter.load(tmp_path / "b") as seg:
        assert seg.backend == "onnxruntime:fp32"


def test_fp32_identical_masks_except_where_fp32_itself_is_undecided():
    reference = np.zeros((1, 2, 2, 2), np.float32)
    reference[0, 1] = [[1.0, -1.0], [0.5, 0.0]]  # pixel (1, 1) is a tie: float rounding decides it
    nudged = reference.copy()
    nudged[0, 1, 1, 1] += 1e-6  # flips the tie only
    assert compare_logits(reference, nudged, None, "fp32", 0.0)["passed"]
    flipped = reference.copy()
    flipped[0, 1, 0, 1] = 1.0  # a decided background pixel becomes foreground
    row = compare_logits(reference, flipped, None, "fp32", 0.0)
    assert not row["passed"] and row["changed_decided_pixels"] == 1
    # 3 foreground pixels vs 2: Dice 2*2/(2+3) = 0.8, as counted by hand
    assert row["mask_dice"] == pytest.approx(0.8) and row["max_abs"] == pytest.approx(2.0)


def test_half_precision_run_reveals_overflow_that_fp32_hides(eager, slices):
    import copy

    import torch

    from edgeseg.export.fp16 import half_precision_logits

    model = copy.deepcopy(eager[0])
    with torch.no_grad():
        model.head.weight.mul_(1e6)  # logits far beyond float16's 65504
        reference = model(torch.from_numpy(slices)).numpy()
    assert np.isfinite(reference).all()
    row = compare_logits(reference, half_precision_logits(model, slices, 4), None, "fp16", 0.002)
    assert not row["finite"] and not row["passed"]


def test_fp32_undecided_pixels_are_told_by_the_two_highest_of_three_logits():
    reference = np.zeros((1, 3, 1, 2), np.float32)
    reference[0, :, 0, 0] = [-8.0, 2.0, 2.0]  # classes 1 and 2 tie; background far below
    reference[0, :, 0, 1] = [-8.0, -7.99999, 3.0]  # a clear class 2; the two lowest nearly tie
    flipped_tie = reference.copy()
    flipped_tie[0, 2, 0, 0] += 1e-6  # float rounding picks class 2 instead of 1
    assert compare_logits(reference, flipped_tie, None, "fp32", 0.0)["passed"]
    flipped_clear = reference.copy()
    flipped_clear[0, 1, 0, 1] = 4.0  # the clear pixel changes class
    row = compare_logits(reference, flipped_clear, None, "fp32", 0.0)
    assert not row["passed"] and row["changed_decided_pixels"] == 1


def test_a_runner_that_cannot_load_the_artifact_is_excluded_from_auto(checkpoint, tmp_path, monkeypatch):
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.runtime import Segmenter
    from edgeseg.runtime.manifest import read_manifest
    from edgeseg.runtime.runners import openvino

    class Refusing(openvino.CompiledModelCache):
        def load(self, build):  # what OpenVINO raises when its CPU plugin cannot compile the graph
            raise RuntimeError("Exception from src/inference/src/core.cpp: CPU plugin cannot compile the model")

    monkeypatch.setattr(openvino, "CompiledModelCache", Refusing)
    export_bundle(checkpoint, tmp_path / "b", ExportSettings(formats=("onnx",)), progress=False, echo=lambda text: None)
    [entry] = read_manifest(tmp_path / "b").artifacts
    assert set(entry.excluded) == {"openvino"} and entry.excluded["openvino"].startswith("does not load: ")
    monkeypatch.undo()  # OpenVINO loads again here; auto still must not pick it for this artifact
    monkeypatch.setenv("EDGESEG_CACHE_DIR", str(tmp_path / "cache"))
    with Segmenter.load(tmp_path / "b") as seg:
        assert seg.backend == "onnxruntime:fp32"
