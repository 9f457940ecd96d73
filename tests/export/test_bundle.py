"""The bundle: manifest hashes match the files, the runtime accepts it, inspect shows it."""

import hashlib
import json
import shutil

import pytest

from edgeseg.errors import BundleError
from edgeseg.runtime.postprocess_options import PostprocessOptions
from edgeseg.runtime.manifest import read_manifest, verify_artifacts
from tests.guarded_cli import GuardedCliRunner


def test_manifest_hashes_and_sizes_match_the_files(bundle):
    folder = bundle["bundle"]
    manifest = json.loads((folder / "manifest.json").read_text())
    files = {a["file"] for a in manifest["artifacts"]}
    assert files == {"model.ts", "model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for entry in manifest["artifacts"]:
        data = (folder / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)


def test_runtime_reads_and_verifies_the_bundle(bundle, eager, checkpoint):
    manifest = read_manifest(bundle["bundle"])
    verify_artifacts(bundle["bundle"], manifest)
    payload = eager[1]
    assert manifest.labels == dict(enumerate(payload["class_names"]))
    assert manifest.postprocess == PostprocessOptions.from_dict(payload["postprocess"], 2).to_dict()
    assert set(manifest.postprocess) == {"resize", "classes"}  # the per-class layout, validation figures left out
    assert manifest.source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert manifest.source["epoch"] == payload["epoch"]
    assert manifest.inputs[0].shape == (-1, 1, 64, 64) and manifest.outputs[0].shape == (-1, 2, 64, 64)
    assert manifest.max_batch == 4
    assert manifest.calibration["method"] == "entropy" and manifest.calibration["slices"] == 32


def test_tampered_artifact_is_refused(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle["bundle"], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 of model.onnx"):
        verify_artifacts(copy, read_manifest(copy))


def test_parity_report_has_every_artifact_and_the_latency_ratio(bundle):
    parity = json.loads((bundle["bundle"] / "parity.json").read_text())
    checks = {(r["key"], r["run_on"]) for r in parity["results"]}
    assert ("onnx-fp16", "torch-float16-cpu") in checks and ("onnx-fp16", "onnxruntime-cpu") in checks
    assert {k for k, _ in checks} == {"torchscript-fp32", "onnx-fp32", "onnx-fp16", "onnx-int8"}
    # every ONNX artifact is scored on each runner auto may pick for it here
    assert {run_on for key, run_on in checks if key.startswith("onnx")} >= {"onnxruntime-cpu", "openvino-cpu"}
    assert parity["passed"]
    # a failed row is exactly a runner the manifest keeps auto away from, for that artifact
    failed = {(r["file"], r["run_on"].removesuffix("-cpu")) for r in parity["results"]
              if not r["passed"] and r["run_on"] in ("onnxruntime-cpu", "openvino-cpu")}
    manifest = read_manifest(bundle["bundle"])
    excluded = {(a.file, name) for a in manifest.artifacts for name in a.excluded}
    assert failed == excluded == {(f, name) for f, why in (parity.get("excluded") or {}).items() for name in why}
    latency = parity["latency"]
    assert latency["ratio"] == pytest.approx(latency["onnx-int8_ms"] / latency["onnx-fp32_ms"])
    assert parity["labelled"] and all(r["dice_gt"] is not None for r in parity["results"])


def test_inspect_prints_artifacts_hash_checks_and_parity(bundle):
    from edgeseg.cli.main import cli

    result = GuardedCliRunner().invoke(cli, ["inspect", str(bundle["bundle"])])
    assert result.exit_code == 0, result.output
    for text in ("model.int8.onnx", "onnx-fp16", "torch-float16-cpu", "int8/fp32", "0=background", "entropy, cpu scheme, 32 slices",
                 "(gate v2 (16 px)):"):
        assert text in result.output
    assert result.output.count(" ok ") + result.output.count(" ok\n") >= 4


def test_inspect_works_where_torch_cannot_be_imported(bundle):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('no torch on this device')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgeseg.cli.main import cli\n"
        f"cli(['inspect', {str(bundle['bundle'])!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "model.fp16.onnx" in proc.stdout and "torch-float16-cpu" in proc.stdout
