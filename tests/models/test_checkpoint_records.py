"""Checkpoints whose recorded fields have the wrong shape or contradict the model: one
`edgeseg: error:` line naming the checkpoint, exit 2, and no bundle (each was a traceback, or a
bundle with one-letter class names, before these checks)."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """A real checkpoint's payload: a 2-class U-Net (base 2, depth 2) for 16x16 slices."""
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.spec import PreprocessSpec

    config = ModelConfig(name="unet", num_classes=2, base=2, depth=2)
    path = tmp_path_factory.mktemp("records") / "base.pt"
    save_checkpoint(path, build_model(config), config, PreprocessSpec(window=(0.0, 255.0), size=(16, 16)),
                    ["background", "liver"], label_values={"liver": [1]}, split={"val": ["case_000"]})
    return torch.load(path, weights_only=True)


def export_refused(tmp_path, payload, fragment, assert_one_line_error, **changes):
    path = tmp_path / "edited.pt"
    torch.save({**payload, **changes}, path)
    proc = edgeseg("export", path, "--out", tmp_path / "bundle", "--quiet")
    assert_one_line_error(proc, fragment)
    assert str(path) in proc.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"class_names": "bl"}, "class_names must be a list of non-empty names, got 'bl'"),
    ({"class_names": ["background", 5]}, "class_names must be a list of non-empty names"),
    ({"class_names": ["background", ""]}, "class_names must be a list of non-empty names"),
    ({"class_names": ["liver", "liver"]}, "class_names name a class twice"),
    ({"postprocess": "garbage"}, "postprocess must be a mapping, got str"),
    ({"split": "garbage"}, "split must be a mapping, got str"),
    ({"split": {"val": "case_000"}}, "split['val'] must be a list of case ids"),
    ({"train_config": ["data"]}, "train_config must be a mapping, got list"),
    ({"label_values": "liver"}, "label_values must be a mapping, got str"),
    ({"label_values": {"liver": 1}}, "label_values['liver'] must be a list of source label values 1..255"),
    ({"label_values": {"liver": [300]}}, "label_values['liver'] must be a list of source label values 1..255"),
    ({"label_values": {"liver": [1], "spleen": [2]}}, "label_values {'liver': [1], 'spleen': [2]} has 2 entries"),
])
def test_malformed_run_records(tmp_path, payload, changes, fragment, assert_one_line_error):
    export_refused(tmp_path, payload, fragment, assert_one_line_error, **changes)


def test_class_names_that_do_not_match_the_model(tmp_path, payload, assert_one_line_error):
    export_refused(tmp_path, payload, "name 3 classes; its model has num_classes 2", assert_one_line_error,
                   class_names=["background", "liver", "spleen"], label_values=None)


@pytest.mark.parametrize("size", [[18, 16], [66, 66]])
def test_spec_size_the_model_cannot_take(tmp_path, payload, size, assert_one_line_error):
    spec = {**payload["spec"], "size": size}
    export_refused(tmp_path, payload, f"its recorded spec does not fit its model: input size {size[0]}x{size[1]} "
                   "is not divisible by 4", assert_one_line_error, spec=spec)


def test_the_records_training_writes_load(payload, tmp_path):
    """The checks refuse nothing a training run writes (the fixture's records, and none at all)."""
    from edgeseg.models.checkpoint import load_model

    for extra in ({}, {"split": None, "label_values": None, "postprocess": None}):
        path = tmp_path / "ok.pt"
        torch.save({**payload, **extra}, path)
        model, loaded = load_model(path)
        assert loaded["class_names"] == ["background", "liver"]
