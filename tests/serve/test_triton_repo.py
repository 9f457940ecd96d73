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


def test_int8_precision_copies_the_int8_graph(serve_bundle, tmp_path):
    result = CliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--precision", "int8",
                                      "--kind", "KIND_CPU"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "edgeseg" / "1" / "model.onnx").read_bytes() == (serve_bundle / "model.int8.onnx").read_bytes()
    assert _parse(tmp_path / "r" / "edgeseg" / "config.pbtxt").instance_group[0].kind == \
        model_config_pb2.ModelInstanceGroup.KIND_CPU


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
