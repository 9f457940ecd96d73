"""A bundle says how it was made: the training's seed, data hashes and sessions, and the export's software."""

import json
from importlib.metadata import version

from edgeseg.cli.inspect import describe_bundle
from edgeseg.models.checkpoint import read_checkpoint

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
