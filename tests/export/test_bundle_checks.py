"""A bundle that fails a check makes `inspect` exit non-zero; killed exports leave nothing for long."""

import shutil
import subprocess
import sys

from edgeseg.runtime.manifest import read_manifest


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_inspect_exits_2_on_a_tampered_model(bundle, tmp_path, assert_one_line_error):
    copy = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = edgeseg("inspect", copy)
    assert_one_line_error(proc, "failed 1 check(s): onnx-fp32: sha256 of model.onnx")
    assert "FAILED" in proc.stdout and "model.int8.onnx" in proc.stdout  # the report is still printed


def test_inspect_exits_2_when_every_model_is_missing(bundle, tmp_path, assert_one_line_error):
    copy = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    entries = read_manifest(copy).artifacts
    for entry in entries:
        (copy / entry.file).unlink()
    proc = edgeseg("inspect", copy)
    assert_one_line_error(proc, f"failed {len(entries)} check(s)")
    for entry in entries:
        assert f"{entry.key}: artifact {entry.file}" in proc.stderr


def test_inspect_of_an_intact_bundle_exits_0(bundle):
    proc = edgeseg("inspect", bundle["bundle"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_export_removes_a_killed_exports_staging_folder_and_force_replaces(checkpoint, tmp_path):
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    out = tmp_path / "bundle"
    stale = tmp_path / f".bundle.staging-{_dead_pid()}-0123abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"\0" * 1000)  # what a killed export left behind
    settings = ExportSettings(formats=("onnx",), fp16=False, int8=False, verify_slices=4, max_batch=2)
    export_bundle(checkpoint, out, settings, cache_dir=tmp_path / "cache", progress=False, echo=lambda s: None)
    assert not stale.exists()
    first = read_manifest(out)
    export_bundle(checkpoint, out, settings, force=True, cache_dir=tmp_path / "cache", progress=False,
                  echo=lambda s: None)
    assert read_manifest(out).created >= first.created
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")) == []
