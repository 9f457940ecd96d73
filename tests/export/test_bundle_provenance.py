"""A bundle says how it was made: the training's seed, data hashes and sessions, and the export's software."""

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

from edgeseg.cli.inspect import describe_bundle
from edgeseg.models.checkpoint import read_checkpoint
from edgeseg.runtime.manifest import read_manifest

from ..conftest import BUNDLE_TRAINING


def test_manifest_and_inspect_carry_training_and_export_provenance(exported_bundle, trained_checkpoint):
    source = json.loads((exported_bundle / "manifest.json").read_text())["source"]
    trained = read_checkpoint(trained_checkpoint)["provenance"]
    training = source["training"]
    assert training["seed"] == BUNDLE_TRAINING["seed"] == trained["seed"]
    assert training["sessions"] == trained["sessions"]
    # the per-case hashes stay in the checkpoint; the bundle keeps the data's and the split's
    assert training["data"] == {k: v for k, v in trained["data"].items() if k != "case_sha256"}
    export = source["export"]
    for name in ("torch", "numpy", "onnx", "onnxruntime"):
        assert export["libraries"][name] == version(name), name
    text, failed = describe_bundle(str(exported_bundle))
    assert not failed
    assert f"trained  seed {BUNDLE_TRAINING['seed']} on {BUNDLE_TRAINING['data']} (data sha256 " \
           f"{trained['data']['sha256'][:12]}; split train {trained['data']['split_sha256']['train'][:12]}" in text
    assert f"torch {version('torch')}" in text and f"onnxruntime {version('onnxruntime')}" in text
    assert text.count("\n    $ ") == len(trained["sessions"]) + 1  # each session's command and the export's


def test_bundle_exported_from_a_folder_whose_name_is_not_utf8_loads(trained_checkpoint, tmp_path):
    # Linux names are bytes: Python holds the undecodable ones as lone surrogates, which json
    # writes as \udce9 and which neither runtime reads back from a manifest.
    folder = tmp_path / os.fsdecode(b"lat\xe9")
    folder.mkdir()
    shutil.copy(trained_checkpoint, folder / "best.pt")
    done = subprocess.run([sys.executable, "-m", "edgeseg.cli", "export", "best.pt", "--out", "bundle",
                           "--formats", "onnx", "--no-int8", "--quiet"], cwd=folder, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    export = read_manifest(folder / "bundle").source["export"]
    assert export["cwd"] == str(tmp_path) + "/lat\\xe9"
    text, failed = describe_bundle(str(folder / "bundle"))
    assert not failed
