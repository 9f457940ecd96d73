"""`inspect` compares the manifest's spec and labels with those the artifacts embed (ONNX
metadata_props, TorchScript extra files) and with the calibration record's spec hash: the
manifest is not covered by the artifact hashes, so an edited one would otherwise pass."""

import json
import shutil
import subprocess
import sys

import pytest

from edgeseg.spec import PreprocessSpec


def inspect(bundle):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "inspect", str(bundle)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def copy(exported_bundle, tmp_path):
    return shutil.copytree(exported_bundle, tmp_path / "bundle")


def edit_manifest(bundle, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def onnx_props(path) -> dict:
    onnx = pytest.importorskip("onnx")
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_the_torch_and_onnx_free_readers_read_what_onnx_and_torch_read(exported_bundle):
    from edgeseg.export.embedded import onnx_metadata, torchscript_extra
    from edgeseg.export.torchscript import load_torchscript

    for file in ("model.onnx", "model.int8.onnx"):
        assert onnx_metadata(exported_bundle / file) == onnx_props(exported_bundle / file)
    _, spec, labels = load_torchscript(exported_bundle / "model.ts")
    extra = torchscript_extra(exported_bundle / "model.ts")
    assert PreprocessSpec.from_json(extra["spec.json"]) == spec
    assert {int(k): v for k, v in json.loads(extra["labels.json"]).items()} == labels


def test_an_edited_window_fails_naming_every_artifact_and_the_calibration_record(copy, assert_one_line_error):
    embedded = PreprocessSpec.from_json(onnx_props(copy / "model.onnx")["edgeseg_spec"])
    low, high = embedded.window
    edited = [low - 100.0, high + 100.0]
    edit_manifest(copy, lambda m: m["spec"].update(window=edited))
    proc = inspect(copy)
    assert_one_line_error(proc, "failed 4 check(s)")  # three artifacts, and the calibration record
    for file in ("model.ts", "model.onnx", "model.int8.onnx"):
        assert (f"manifest spec differs from the spec {file} embeds: window {[low, high]} (manifest {edited})"
                in proc.stderr)
    edited_hash = PreprocessSpec.from_dict({**embedded.to_dict(), "window": edited}).hash
    assert (f"the INT8 calibration record is for spec {embedded.hash}, the manifest's spec is {edited_hash}"
            in proc.stderr)


def test_renamed_labels_fail_naming_both(copy, assert_one_line_error):
    labels = json.loads(onnx_props(copy / "model.onnx")["edgeseg_labels"])
    edit_manifest(copy, lambda m: m["labels"].update({"1": "spleen"}))
    assert labels["1"] != "spleen"
    proc = inspect(copy)
    assert_one_line_error(proc, "failed 3 check(s)")
    theirs = ", ".join(f"{k}={v}" for k, v in sorted(labels.items(), key=lambda kv: int(kv[0])))
    ours = ", ".join(f"{k}={'spleen' if k == '1' else v}" for k, v in sorted(labels.items(), key=lambda kv: int(kv[0])))
    assert f"manifest labels {ours} differ from the labels model.int8.onnx embeds: {theirs}" in proc.stderr


def test_an_intact_bundle_passes_with_nothing_left_unchecked(exported_bundle):
    proc = inspect(exported_bundle)
    assert proc.returncode == 0, proc.stderr
    assert "embeds no spec" not in proc.stdout


def test_a_metadata_entry_whose_key_is_a_varint_is_read_without_allocating_it(tmp_path):
    """protobuf skips a key of the wrong wire type; onnx_metadata once made bytes(2**62) of it
    (MemoryError, a traceback from ``edgeseg inspect``)."""
    from edgeseg.export.embedded import onnx_metadata
    from tests.onnx_placements import key, varint

    entry = key(1, 0) + varint(1 << 62) + key(2, 2) + b"\x01v"
    path = tmp_path / "model.onnx"
    path.write_bytes(key(1, 0) + b"\x08" + key(14, 2) + varint(len(entry)) + entry)
    assert onnx_metadata(path) == {"": "v"}
