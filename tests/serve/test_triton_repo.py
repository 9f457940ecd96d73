"""The Triton repository parses with Triton's ModelConfig protobuf and holds the bundle's ONNX bytes."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from edgeseg.cli.main import cli

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (present with tritonclient)


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_parses_and_onnx_is_byte_identical(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--name", "liver", "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    config = _parse(repo / "liver" / "config.pbtxt")
    assert config.name == "liver" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in config.input] == [("image", [1, 64, 64])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("logits", [2, 64, 64])]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    copied = (repo / "liver" / "1" / "model.onnx").read_bytes()
    assert copied == (serve_bundle / "model.onnx").read_bytes()
    assert not (repo / "liver-trt").exists()
    assert _parse(repo / "liver-pipeline" / "config.pbtxt").max_batch_size == 4


def test_int8_cpu_repository_serves_the_int8_graph_on_the_python_backend(serve_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--precision", "int8",
                                      "--kind", "KIND_CPU"])
    assert result.exit_code == 0, result.output
    for model in ("edgeseg", "edgeseg-pipeline"):
        folder = tmp_path / "r" / model
        assert (folder / "1" / "bundle" / "model.int8.onnx").read_bytes() == (serve_bundle / "model.int8.onnx").read_bytes()
        manifest = json.loads((folder / "1" / "bundle" / "manifest.json").read_text())
        assert [a["file"] for a in manifest["artifacts"]] == ["model.int8.onnx"]
        config = _parse(folder / "config.pbtxt")
        assert config.backend == "python" and config.platform == ""
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert config.parameters["edgeseg_backend"].string_value == "onnxruntime:int8"
        assert "from edgeseg.serve.triton_python import TritonPythonModel" in (folder / "1" / "model.py").read_text()
    assert not (tmp_path / "r" / "edgeseg" / "1" / "model.onnx").exists()


def test_pipeline_model_takes_int16_hu_and_returns_uint8_labels(serve_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--max-batch", "0"])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "r" / "edgeseg-pipeline" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("hu", model_config_pb2.TYPE_INT16, [-1, -1, -1])]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("labels", model_config_pb2.TYPE_UINT8, [-1, -1, -1])]
    assert config.parameters["edgeseg_role"].string_value == "pipeline"
    network = _parse(tmp_path / "r" / "edgeseg" / "config.pbtxt")
    assert network.max_batch_size == 0 and not network.HasField("dynamic_batching")
    assert [list(t.dims) for t in network.input] == [[-1, 1, 64, 64]]


@pytest.mark.parametrize("args,message", [
    (["--max-batch", "-1"], "--max-batch must be an integer >= 0"),
    (["--max-batch", "16"], "--max-batch 16 exceeds the bundle's max_batch 8"),
    (["--name", "my model/../x"], "model name 'my model/../x' must be"),
    (["--name", ".."], "model name '..' must be"),
    (["--name", ""], "model name '' must be"),
])
def test_bad_flags_are_one_line_and_write_nothing(serve_bundle, tmp_path, args, message):
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert result.output.startswith("edgeseg: error: ") and message in result.output
    assert not repo.exists() and list(tmp_path.iterdir()) == []


def test_tensorrt_engines_get_their_own_model_with_cc_filenames(serve_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    engines = {"8.9": b"engine for ada", "9.0": b"engine for hopper"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    for cc, payload in engines.items():
        name = f"model.fp32.sm{cc.replace('.', '')}.plan"
        (bundle / name).write_bytes(payload)
        manifest["artifacts"].append({"file": name, "format": "tensorrt", "precision": "fp32",
                                      "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload),
                                      "fingerprint": {"gpu": "x", "compute_capability": cc, "tensorrt": "10.9.0"}})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["triton", str(bundle), str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "repo" / "edgeseg-trt" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {"8.9": "model.fp32.sm89.plan", "9.0": "model.fp32.sm90.plan"}
    assert (tmp_path / "repo" / "edgeseg-trt" / "1" / "model.fp32.sm90.plan").read_bytes() == engines["9.0"]


def test_existing_repository_needs_force_and_tampered_bundle_is_refused(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo)])
    assert result.exit_code != 0
    assert "pass --force" in result.output
    assert (repo / "keep.txt").read_text() == "mine"
    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    result = CliRunner().invoke(cli, ["triton", str(bundle), str(tmp_path / "other")])
    assert result.exit_code != 0
    assert "model.onnx" in result.output
    assert not (tmp_path / "other").exists()
