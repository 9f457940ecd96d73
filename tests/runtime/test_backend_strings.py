"""``Segmenter.load`` takes the backend strings ``--backend`` takes (docs/runtime.md), and every
other ``backend`` or ``threads`` value is one BackendError naming it, never a TypeError or
ValueError from inside the selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeseg.errors import BackendError
from edgeseg.runtime import Segmenter
from edgeseg.runtime.runners import runner_class


def _needs(name: str) -> None:
    if not runner_class(name).available():
        pytest.skip(f"{name} is not installed")


@pytest.mark.parametrize(("backend", "runs"), [
    ("onnxruntime:int8,onnxruntime:fp32", "onnxruntime:int8"),      # a comma list, the first that loads
    ("onnxruntime-gpu:fp32,onnxruntime:fp32", "onnxruntime:fp32"),  # falls back where no GPU provider is
    (" onnxruntime:fp32 , onnxruntime:int8 ", "onnxruntime:fp32"),
    ([" onnxruntime:int8 "], "onnxruntime:int8"),
    # a bundle exported without a TensorRT engine: the list passes on, as the docs' example means
    ("tensorrt,onnxruntime:fp32", "onnxruntime:fp32"),
    ("onnxruntime:fp16,tensorrt:int8,onnxruntime:int8", "onnxruntime:int8"),
])
def test_a_comma_list_is_a_fallback_order_as_for_the_cli(bundle_dir, backend, runs):
    from edgeseg.runtime.runners.onnxruntime import OnnxRuntimeRunner

    if "gpu" in str(backend) and OnnxRuntimeRunner.gpu_providers():
        pytest.skip("onnxruntime here has a GPU provider: the list would pick it")
    with Segmenter.load(bundle_dir, backend=backend) as seg:
        assert seg.backend == runs


def test_auto_with_surrounding_spaces_is_auto(bundle_dir):
    _needs("openvino")
    with Segmenter.load(bundle_dir, backend=" auto ") as seg:
        assert seg.runner.name in ("onnxruntime", "openvino", "torchscript")


@pytest.mark.parametrize(("backend", "message"), [
    ("auto,onnxruntime", "'auto' is a choice of its own; it cannot be listed with others"),
    (["onnxruntime", "auto"], "'auto' is a choice of its own"),
    ("onnxruntime,http://127.0.0.1:1/models/m", "'http://127.0.0.1:1/models/m' is a choice of its own"),
    ("onnxruntime,", "has an empty name"),
    ("", "has an empty name"),
    (None, "backend must be a string or a list of strings, got None"),
    (b"auto", "backend must be a string or a list of strings, got b'auto'"),
    (["onnxruntime", 3], "backend must be a string or a list of strings"),
    ("http://127.0.0.1:99999/models/m",
     r"must look like http://HOST:PORT/models/NAME or grpc://HOST:PORT/models/NAME \(PORT 1\.\.65535\)"),
    ("grpc://127.0.0.1:99999/models/m", r"\(PORT 1\.\.65535\), got 'grpc://127\.0\.0\.1:99999/models/m'"),
    ("http://127.0.0.1:x/models/m", r"must look like http://HOST:PORT/models/NAME"),
    ("tensorrt,onnxruntime:fp16", "backend 'tensorrt' and 'onnxruntime:fp16' have no artifact in this bundle"),
    ("tensorrt", "backend 'tensorrt' has no artifact in this bundle; it offers"),
    ("tensorrrt,onnxruntime", "unknown backend 'tensorrrt'"),  # a typo in a list is still refused
    # a precision the runner's class does not list, whatever artifacts the bundle holds
    ("torchscript:int8", "backend 'torchscript' runs fp32 artifacts, not 'int8'"),
    ("onnxruntime:int4", "backend 'onnxruntime' runs fp32, fp16, int8 artifacts, not 'int4'"),
])
def test_a_backend_that_names_no_runner_is_one_backend_error(bundle_dir, backend, message):
    with pytest.raises(BackendError, match=message):
        Segmenter.load(bundle_dir, backend=backend)


@pytest.mark.parametrize("threads", [None, float("nan"), float("inf"), "2", [1]])
def test_a_thread_count_that_is_not_a_number_is_one_backend_error(bundle_dir, threads):
    for backend in ("auto", "onnxruntime:fp32"):
        with pytest.raises(BackendError, match="threads must be between 0"):
            Segmenter.load(bundle_dir, backend=backend, threads=threads)


@pytest.mark.parametrize(("backend", "runs"), [
    ("OnnxRuntime:FP32", "onnxruntime:fp32"),
    ("ONNXRUNTIME:int8", "onnxruntime:int8"),
    (["OnnxRuntime:Int8"], "onnxruntime:int8"),
    ("TensorRT,OnnxRuntime:FP32", "onnxruntime:fp32"),  # a list is canonical name by name
])
def test_backend_names_are_matched_without_regard_to_case(bundle_dir, backend, runs):
    with Segmenter.load(bundle_dir, backend=backend) as seg:
        assert seg.backend == runs


def test_auto_in_capitals_is_auto(bundle_dir):
    _needs("openvino")
    with Segmenter.load(bundle_dir, backend="AUTO") as seg:
        assert seg.runner.name in ("onnxruntime", "openvino", "torchscript")


def test_predict_takes_a_backend_name_in_any_case(bundle_dir, tmp_path):
    from tests.guarded_cli import GuardedCliRunner

    from edgeseg.cli.main import cli

    _needs("openvino")
    image = sorted((Path(__file__).resolve().parents[1] / "data" / "msd_liver_slices" / "images").iterdir())[0]
    out = tmp_path / "pred.npy"
    done = GuardedCliRunner().invoke(cli, ["predict", str(bundle_dir), str(image), "--out", str(out),
                                           "--backend", "OpenVINO", "--quiet"])
    assert done.exit_code == 0, done.output
    assert "backend openvino:fp32" in done.output and out.is_file()


def test_bench_names_a_backend_given_in_capitals_as_the_runtime_does(bundle_dir):
    from edgeseg.bench.runtime import backend_labels

    assert backend_labels(bundle_dir, ["OnnxRuntime:INT8", "Auto"]) == ["onnxruntime:int8", "auto"]
    assert backend_labels(bundle_dir, ["ALL"])[0] == "auto"
