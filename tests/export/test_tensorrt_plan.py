"""TensorRT build decisions (10 vs 11) without a GPU, and the engine build where one exists."""

from __future__ import annotations

import importlib.util
import shlex

import pytest

from edgeseg.errors import BackendError, MissingDependencyError
from edgeseg.export.tensorrt import build_engine, engine_file_name, plan_build, trt_major, trtexec_command

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("version,major", [("10.0.1", 10), ("10.13.3.9", 10), ("11.0.0.27", 11), ("11.4.1", 11)])
def test_major_version_is_read(version, major):
    assert trt_major(version) == major


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0", "12.0.0", "ten", ""])
def test_unsupported_or_unreadable_versions_are_refused(version):
    with pytest.raises(BackendError, match="TensorRT"):
        trt_major(version)


@pytest.mark.parametrize("precision,flags,onnx_file", [
    ("fp32", (), "model.onnx"), ("fp16", ("FP16",), "model.fp16.onnx"), ("int8", ("INT8",), "model.int8.onnx")])
def test_tensorrt10_enables_precision_by_builder_flags(precision, flags, onnx_file):
    plan = plan_build("10.13.0", precision, (1, 256, 256), max_batch=8)
    assert plan.builder_flags == flags
    assert not plan.strongly_typed
    assert plan.onnx_file == onnx_file


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt11_is_strongly_typed_with_no_precision_flags(precision):
    plan = plan_build("11.2.0", precision, (1, 256, 256), max_batch=8)
    assert plan.strongly_typed
    assert plan.builder_flags == ()
    # the precision comes from the graph, so each precision still builds from its own ONNX file
    assert plan.onnx_file == {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}[precision]


def test_profile_spans_batch_one_to_max():
    plan = plan_build("10.5.0", "fp16", (1, 128, 160), max_batch=6)
    assert plan.min_shape == (1, 1, 128, 160)
    assert plan.opt_shape == (3, 1, 128, 160)
    assert plan.max_shape == (6, 1, 128, 160)
    assert plan_build("11.0.0", "fp32", (1, 64, 64), max_batch=1).opt_shape == (1, 1, 64, 64)


def test_bad_precision_and_batch_are_refused():
    with pytest.raises(BackendError, match="precision"):
        plan_build("10.0.0", "bf16", (1, 64, 64), 4)
    with pytest.raises(BackendError, match="max batch"):
        plan_build("10.0.0", "fp16", (1, 64, 64), 0)


def test_trtexec_command_matches_the_plan():
    v10 = shlex.split(trtexec_command(plan_build("10.8.0", "int8", (1, 256, 256), 8), "image", "model.plan"))
    assert v10[0] == "trtexec"
    assert "--onnx=model.int8.onnx" in v10 and "--int8" in v10 and "--fp16" not in v10
    assert "--minShapes=image:1x1x256x256" in v10 and "--maxShapes=image:8x1x256x256" in v10
    assert "--timingCacheFile=timing.cache" in v10 and "--saveEngine=model.plan" in v10
    v11 = shlex.split(trtexec_command(plan_build("11.1.0", "int8", (1, 256, 256), 8), "image", "model.plan"))
    assert "--int8" not in v11 and "--fp16" not in v11
    assert "--onnx=model.int8.onnx" in v11


def test_engine_file_names_carry_precision_and_architecture():
    assert engine_file_name("fp16", "8.9") == "model.fp16.sm89.plan"


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed; this checks the message given without it")
def test_build_without_tensorrt_names_the_extra(tmp_path):
    plan = plan_build("10.0.0", "fp32", (1, 64, 64), 2)
    with pytest.raises(MissingDependencyError, match=r"edgeseg\[tensorrt\]"):
        build_engine(tmp_path / "model.onnx", tmp_path / "model.plan", plan, "image", tmp_path / "timing.cache")
    assert not (tmp_path / "model.plan").exists()


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (pip install 'edgeseg[tensorrt]' on a CUDA machine)")
def test_plan_flags_exist_in_the_installed_tensorrt():
    import tensorrt as trt

    plan = plan_build(trt.__version__, "int8", (1, 64, 64), 2)
    for name in plan.builder_flags:
        assert hasattr(trt.BuilderFlag, name)
