"""A bundle that fails a check makes `inspect` exit non-zero; killed exports leave nothing for long."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.runtime.manifest import read_manifest

DATA = Path(__file__).parents[1] / "data"


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


@pytest.mark.parametrize("parity", [None, "[]"])
def test_inspect_exits_2_when_nothing_records_the_gate(bundle, tmp_path, assert_one_line_error, parity):
    """Every export writes parity.json; a bundle without it (or with an empty one) was listed as
    fine, though nothing says its artifacts were ever checked against the trained model."""
    copy = shutil.copytree(bundle["bundle"], tmp_path / "bundle")
    if parity is None:
        (copy / "parity.json").unlink()
    else:
        (copy / "parity.json").write_text(parity)
    proc = edgeseg("inspect", copy)
    assert_one_line_error(proc, "parity.json is missing" if parity is None else "parity.json holds no parity results")


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


def test_training_data_is_recorded_absolute_so_export_finds_it_from_elsewhere(tmp_path, monkeypatch):
    import torch

    from edgeseg.export.verify import load_verify_set
    from edgeseg.models.checkpoint import checkpoint_spec

    data = DATA / "msd_liver_slices"
    shutil.copytree(data, tmp_path / "slices")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "train", "--data", "slices", "--out", "run", "--epochs",
                           "1", "--size", "32", "--base", "4", "--depth", "2", "--batch-size", "2", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert proc.returncode == 0, proc.stderr
    payload = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert payload["train_config"]["data"] == str(tmp_path / "slices")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert len(load_verify_set(payload, checkpoint_spec(payload), None, 2).images) == 2


def test_missing_training_data_names_it_and_the_way_out(tmp_path, monkeypatch):
    from edgeseg.errors import DataError
    from edgeseg.export.verify import load_verify_set
    from edgeseg.spec import PreprocessSpec

    monkeypatch.chdir(tmp_path)
    payload = {"train_config": {"data": "runs/data/slices"}, "split": {"val": ["10001"]}, "class_names": ["bg", "liver"]}
    with pytest.raises(DataError, match=r"training data runs/data/slices is not found .*pass --verify-data"):
        load_verify_set(payload, PreprocessSpec(size=(32, 32)), None, 2)


def test_an_export_without_force_never_replaces_a_bundle_that_appeared_while_it_ran(checkpoint, tmp_path):
    """Two exports started to one new folder both find it absent; the second to finish must not
    replace the first's bundle (only --force replaces). The other export is played here by the
    echo callback, which lands a bundle at --out while this one runs."""
    from edgeseg.errors import DataError
    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings

    out = tmp_path / "bundle"
    settings = ExportSettings(formats=("onnx",), fp16=False, int8=False, verify_slices=4, max_batch=2)

    def other_export_lands(text: str) -> None:
        if not out.exists():
            out.mkdir()
            (out / "manifest.json").write_text('{"the other export": true}')

    with pytest.raises(DataError, match="appeared while this export ran"):
        export_bundle(checkpoint, out, settings, cache_dir=tmp_path / "cache", progress=False, echo=other_export_lands)
    assert (out / "manifest.json").read_text() == '{"the other export": true}'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle")) == []  # no staging left
