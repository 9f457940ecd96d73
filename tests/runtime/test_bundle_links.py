"""A bundle holds its own files: a manifest, parity report or artifact that is a link resolving
outside the bundle folder is refused by name, even where its target's sha256 matches the manifest
(a bundle is moved and deployed as one folder; the file a link points at is whatever is there on
each machine). Links that stay inside the folder, and a bundle folder reached through a link, load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.errors import BundleError
from edgeseg.runtime import Segmenter, read_manifest, verify_artifacts

JPG = sorted((Path(__file__).resolve().parents[1] / "data" / "msd_liver_slices" / "images").iterdir())[0]


def _move_out(bundle: Path, name: str, elsewhere: Path) -> Path:
    """Move ``bundle/name`` to ``elsewhere`` and leave a link to it in its place: the same bytes."""
    elsewhere.mkdir(parents=True, exist_ok=True)
    target = elsewhere / name
    shutil.move(bundle / name, target)
    (bundle / name).symlink_to(target)
    return target


def test_an_artifact_linked_from_outside_is_refused_though_its_sha256_matches(bundle_copy, tmp_path):
    target = _move_out(bundle_copy, "model.onnx", tmp_path / "shared")
    manifest = read_manifest(bundle_copy)
    with pytest.raises(BundleError) as caught:
        verify_artifacts(bundle_copy, manifest)
    assert str(caught.value) == (f"bundle {bundle_copy}: model.onnx resolves to {target.resolve()}, outside the "
                                 "bundle folder (a bundle holds its own files, not links to others)")
    with pytest.raises(BundleError, match="model.onnx resolves to .*outside the bundle folder"):
        Segmenter.load(bundle_copy, backend="onnxruntime:fp32")


def test_predict_names_the_linked_artifact_in_one_line_and_writes_nothing(bundle_copy, tmp_path, assert_one_line_error):
    _move_out(bundle_copy, "model.onnx", tmp_path / "shared")
    out = tmp_path / "out" / "labels.npy"
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "predict", str(bundle_copy), str(JPG), "--out",
                           str(out), "--backend", "onnxruntime:fp32", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert_one_line_error(proc, "model.onnx resolves to")
    assert "outside the bundle folder" in proc.stderr
    assert not out.exists()


def test_a_manifest_linked_from_outside_is_refused(bundle_copy, tmp_path):
    target = _move_out(bundle_copy, "manifest.json", tmp_path / "shared")
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle_copy)
    assert str(caught.value).startswith(f"bundle {bundle_copy}: manifest.json resolves to {target.resolve()}, outside")


def test_inspect_refuses_a_parity_report_linked_from_outside(bundle_copy, tmp_path, assert_one_line_error):
    _move_out(bundle_copy, "parity.json", tmp_path / "shared")
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", "inspect", str(bundle_copy)], capture_output=True,
                          text=True, timeout=300)
    assert_one_line_error(proc, "parity.json resolves to")


def test_links_inside_the_folder_and_a_linked_folder_still_load(bundle_copy, tmp_path):
    (bundle_copy / "store").mkdir()
    shutil.move(bundle_copy / "model.onnx", bundle_copy / "store" / "model.onnx")
    (bundle_copy / "model.onnx").symlink_to(Path("store") / "model.onnx")  # relative, inside the folder
    link = tmp_path / "current"
    link.symlink_to(bundle_copy, target_is_directory=True)  # how deployments switch versions
    for folder in (bundle_copy, link):
        with Segmenter.load(folder, backend="onnxruntime:fp32") as seg:
            assert seg.backend == "onnxruntime:fp32"


def test_a_sibling_folder_sharing_the_bundle_name_prefix_is_outside(bundle_copy, tmp_path):
    # "/x/bundle-old/model.onnx" starts with the text "/x/bundle" but is not in /x/bundle
    sibling = tmp_path / (bundle_copy.name + "-old")
    _move_out(bundle_copy, "model.onnx", sibling)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        verify_artifacts(bundle_copy, read_manifest(bundle_copy))
    assert os.path.exists(bundle_copy / "model.onnx")
