"""The Triton repository parses with Triton's ModelConfig protobuf and holds the bundle's ONNX bytes."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.cli.main import cli
from tests.guarded_cli import GuardedCliRunner

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from google.protobuf import text_format  # noqa: E402  (present with tritonclient)


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_parses_and_onnx_is_byte_identical(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), "--name", "liver", "--max-batch", "4"])
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
    # the bundle it came from, as the Python-backend models name it (it was only on those)
    bundle_sha256 = hashlib.sha256((serve_bundle / "manifest.json").read_bytes()).hexdigest()
    assert config.parameters["edgeseg_manifest_sha256"].string_value == bundle_sha256
    pipeline = _parse(repo / "liver-pipeline" / "config.pbtxt")
    assert pipeline.parameters["edgeseg_manifest_sha256"].string_value == bundle_sha256
    assert pipeline.max_batch_size == 0 and not pipeline.HasField("dynamic_batching")
    assert pipeline.parameters["edgeseg_max_slices"].string_value == "4"


def test_pipeline_takes_an_optional_spacing_and_is_not_batched_by_triton(serve_bundle, tmp_path):
    """Every input of a model Triton batches carries the batch axis; a volume's spacing is one
    [3] vector, so the pipeline is not batched (N stays capped by edgeseg_max_slices)."""
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "r" / "edgeseg-pipeline" / "config.pbtxt")
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in config.input] == [
        ("hu", model_config_pb2.TYPE_INT16, [-1, -1, -1], False), ("spacing", model_config_pb2.TYPE_FP32, [3], True)]
    assert config.max_batch_size == 0 and config.parameters["edgeseg_max_slices"].string_value == "4"
    assert "spacing" not in result.output  # the test bundle filters nothing by mL


def test_int8_cpu_repository_serves_the_int8_graph_on_the_python_backend(serve_bundle, tmp_path):
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--precision", "int8",
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


def test_a_backend_named_in_capitals_is_written_in_the_runtime_s_form(serve_bundle, tmp_path):
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--kind", "KIND_CPU",
                                             "--backend", "OnnxRuntime"])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "r" / "edgeseg-pipeline" / "config.pbtxt")
    assert config.parameters["edgeseg_backend"].string_value == "onnxruntime:fp32"


def test_pipeline_model_takes_int16_hu_and_returns_uint8_labels(serve_bundle, tmp_path):
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--max-batch", "0"])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "r" / "edgeseg-pipeline" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0
    hu = config.input[0]
    assert (hu.name, hu.data_type, list(hu.dims)) == ("hu", model_config_pb2.TYPE_INT16, [-1, -1, -1])
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
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo), *args])
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
    result = GuardedCliRunner().invoke(cli, ["triton", str(bundle), str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "repo" / "edgeseg-trt" / "config.pbtxt")
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {"8.9": "model.fp32.sm89.plan", "9.0": "model.fp32.sm90.plan"}
    assert config.parameters["edgeseg_manifest_sha256"].string_value == \
        hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert (tmp_path / "repo" / "edgeseg-trt" / "1" / "model.fp32.sm90.plan").read_bytes() == engines["9.0"]


def test_existing_repository_needs_force_and_tampered_bundle_is_refused(serve_bundle, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "keep.txt").write_text("mine")
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(repo)])
    assert result.exit_code != 0
    assert "pass --overwrite" in result.output
    assert (repo / "keep.txt").read_text() == "mine"
    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    result = GuardedCliRunner().invoke(cli, ["triton", str(bundle), str(tmp_path / "other")])
    assert result.exit_code != 0
    assert "model.onnx" in result.output
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_a_manifest_tensor_name_cannot_write_other_config_fields(serve_bundle, tmp_path, field):
    """Names from the manifest were written into config.pbtxt as they were: this one ended its
    string and added an input, and the config still parsed."""
    bundle = Path(shutil.copytree(serve_bundle, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    name = manifest[field][0]["name"]
    manifest[field][0]["name"] = f'{name}" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "extra'
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = GuardedCliRunner().invoke(cli, ["triton", str(bundle), str(tmp_path / "repo")])
    assert result.exit_code == 2 and result.output.startswith(f"edgeseg: error: tensor name '{name}\" data_type")
    assert "cannot be written into config.pbtxt" in result.output
    assert not (tmp_path / "repo").exists()


def _int8_excluded_bundle(serve_bundle, tmp_path, excluded):
    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["precision"] == "int8":
            entry["excluded"] = excluded
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


@pytest.mark.parametrize("kind,excluded,expected", [
    ("KIND_CPU", {"onnxruntime": "dice drop 0.0123 > 0.01"},
     "edgeseg and edgeseg-pipeline run model.int8.onnx on onnxruntime, which the export gate excluded "
     "(dice drop 0.0123 > 0.01); auto never picks it"),
    ("KIND_GPU", {"onnxruntime-gpu": "agreement 0.97 < 0.99"},
     "edgeseg runs model.int8.onnx on onnxruntime-gpu, which the export gate excluded (agreement 0.97 < 0.99); "
     "auto never picks it"),
    ("KIND_GPU", {"onnxruntime": "dice drop 0.02 > 0.01"},
     "edgeseg-pipeline runs model.int8.onnx on onnxruntime, which the export gate excluded (dice drop 0.02 > 0.01); "
     "auto never picks it"),
])
def test_a_repository_serving_a_runner_the_gate_excluded_says_so(serve_bundle, tmp_path, kind, excluded, expected):
    """--precision int8 names the graph, so the repository is written, as a named backend loads in
    the runtime; but the user is told, on one line per runner, what the export gate found."""
    bundle = _int8_excluded_bundle(serve_bundle, tmp_path, excluded)
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "triton", str(bundle), str(tmp_path / "r"),
                           "--precision", "int8", "--kind", kind], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "export gate excluded" in line] == [f"edgeseg: warning: {expected}"]
    assert (tmp_path / "r" / "edgeseg-pipeline" / "1" / "bundle" / "model.int8.onnx").is_file()
    # A KIND_GPU network runs on Triton's ONNX Runtime GPU, which this CPU export's gate never ran.
    unscored = [] if kind == "KIND_CPU" or "onnxruntime-gpu" in excluded else [
        "edgeseg: warning: edgeseg runs model.int8.onnx on onnxruntime-gpu, which auto never picks: not scored by the "
        "export gate: onnxruntime-gpu was not installed where the bundle was exported; edgeseg gate scores it"]
    assert [line for line in done.stderr.splitlines() if "not scored" in line] == unscored
    # The FP32 graph the gate accepted gets no such line (but for the runner it never ran).
    fp32 = subprocess.run([sys.executable, "-m", "edgeseg.cli", "triton", str(bundle), str(tmp_path / "f"),
                           "--kind", kind], capture_output=True, text=True, timeout=300)
    assert fp32.returncode == 0 and "export gate excluded" not in fp32.stderr, fp32.stderr
    assert ("not scored by the export gate" in fp32.stderr) == (kind == "KIND_GPU"), fp32.stderr


@pytest.mark.parametrize("rows, warned", [("as-exported", False), ("rows-without-sha256", True)])
def test_a_repository_of_an_old_bundle_is_judged_by_its_parity_rows(rows, warned, serve_bundle, tmp_path):
    """A bundle without ``scored`` whose parity rows name OpenVINO on the INT8 graph by file and
    sha256: the pipeline running it on OpenVINO is what auto would run, so nothing is said; rows
    without sha256 (before 2026-12-06) vouch for ONNX Runtime alone there, and the user is told."""
    from tests.old_bundles import old_bundle

    pytest.importorskip("openvino")
    bundle = old_bundle(serve_bundle, tmp_path / "bundle", rows)
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "triton", str(bundle), str(tmp_path / "r"),
                           "--precision", "int8", "--kind", "KIND_CPU", "--backend", "openvino"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = ["edgeseg: warning: edgeseg and edgeseg-pipeline run model.int8.onnx on openvino, which auto never picks: not "
                "scored by the export gate: a manifest without scored runners vouches for onnxruntime alone on an "
                "INT8 graph; edgeseg gate scores it"] if warned else []
    assert [line for line in done.stderr.splitlines() if "not scored" in line] == expected


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_tensorrt_scheme_int8_graph_on_the_cpu_warns_where_the_cpu_lacks_vnni(serve_bundle, tmp_path):
    from edgeseg.export.triton import log, write_triton_repo
    from edgeseg.runtime.selection import cpu_lacks_vnni

    bundle = tmp_path / "bundle"
    shutil.copytree(serve_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["precision"] == "int8":
            entry.setdefault("extra", {})["int8_scheme"] = "tensorrt"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    handler = _Lines()  # on the module's logger itself: the CLI's logging set-up stops propagation
    log.addHandler(handler)
    try:
        write_triton_repo(bundle, tmp_path / "r", precision="int8", kind="KIND_CPU")
    finally:
        log.removeHandler(handler)
    lines = handler.lines
    if cpu_lacks_vnni():
        assert lines == ["edgeseg and edgeseg-pipeline run model.int8.onnx on onnxruntime: INT8 graph of the tensorrt "
                         "scheme: its signed activations saturate u8 x s8 sums on this CPU (no VNNI); re-export with "
                         "--int8-scheme cpu (this machine's CPU; check the Triton host's)"]
    else:
        assert lines == []


@pytest.mark.parametrize("backend, message", [
    ("tflite", "unknown backend 'tflite'"),
    ("auto", "--backend must name one runner (onnxruntime, openvino, ...) for the repository's Python-backend "
             "models, got 'auto'"),
    ("http://127.0.0.1:8000/models/x", "--backend must name one runner"),
    ("onnxruntime,openvino", "--backend must name one runner"),
    ("onnxruntime:int8", "--backend 'onnxruntime:int8': give the runner alone; the precision is --precision's"),
    # the models hold the ONNX graph alone, which these runners cannot load (Triton: UNAVAILABLE)
    ("torchscript", "--backend torchscript runs torchscript artifacts; the repository's Python-backend models hold "
                    "the bundle's ONNX graph: name one of onnxruntime, onnxruntime-gpu, openvino"),
    ("tensorrt", "--backend tensorrt runs tensorrt artifacts"),
])
def test_a_backend_the_repository_cannot_use_is_refused_before_anything_is_written(serve_bundle, tmp_path, backend,
                                                                                    message):
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--kind", "KIND_CPU",
                                             "--backend", backend])
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "r").exists()


def test_mirroring_is_a_parameter_of_the_pipeline_alone(serve_bundle, tmp_path):
    result = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "r"), "--kind", "KIND_CPU",
                                             "--tta", "flip"])
    assert result.exit_code == 0, result.output
    pipeline = _parse(tmp_path / "r" / "edgeseg-pipeline" / "config.pbtxt")
    network = _parse(tmp_path / "r" / "edgeseg" / "config.pbtxt")
    assert pipeline.parameters["edgeseg_tta"].string_value == "flip"
    assert "edgeseg_tta" not in network.parameters
    plain = GuardedCliRunner().invoke(cli, ["triton", str(serve_bundle), str(tmp_path / "p"), "--kind", "KIND_CPU"])
    assert plain.exit_code == 0 and "edgeseg_tta" not in _parse(tmp_path / "p" / "edgeseg-pipeline" / "config.pbtxt").parameters
