"""Recipes: the shipped files parse, flags override them, they are recorded in the checkpoint
and carried into the bundle manifest; bad recipes are one-line errors with nothing written."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.spec import PreprocessSpec
from edgeseg.train.config import TrainConfig, build_spec
from edgeseg.train.recipes import load_recipe, recipe_dir, recipe_names

PACKAGE = Path(__file__).resolve().parents[2] / "edgeseg"


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


TINY = """name = "tiny-lesions"
version = 3
[train]
size = 32
base = 4
depth = 2
window = [0, 255]
intensity = "hu-clipped:0,255"
case_pattern = "file"
mask = "labels"
labels = { faint = [1], bright = [2] }
loss = "tversky-focal"
class_weights = [0.5, 1, 2]
epochs = 5
batch_size = 4
lr = 0.01
"""


@pytest.mark.parametrize("name", ["liver-ct", "covid-infection"])
def test_shipped_recipes_parse_into_a_train_config(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.version >= 1
    assert recipe.sha256 == hashlib.sha256((PACKAGE / "recipes" / f"{name}.toml").read_bytes()).hexdigest()
    cfg = TrainConfig(**recipe.values)
    assert cfg.labels == recipe.values["labels"]
    assert build_spec(cfg).window == tuple(recipe.values["window"])


# The sha256 of each shipped recipe's bytes at each version: checkpoints record it, so a recipe's
# file may change only with a new version (and a new line here).
SHIPPED = {
    ("liver-ct", 1): "4c424b1bc00104e89d8ab0a44c55623f521fd9901aa1c038334d7e3ac876796e",
    ("covid-infection", 1): "4762a7f588b4abd3fbc51c0a44882c006128ef0fe48f174ee8c524491417d341",
    ("covid-infection", 2): "1af9fb1acef0e6a17b84849342c5fae73c98dc9e752b734b6939b449bf0fd576",
    ("covid-infection", 3): "0fdcf9bb8d9ad3399a77b33ee53bb100fbcefdee4c2ee146423dab25f2da8e60",
}


def test_shipped_recipes_are_package_data_with_the_bytes_of_their_version():
    assert recipe_dir() == PACKAGE / "recipes"
    assert recipe_names() == ["covid-infection", "liver-ct"]
    for name in recipe_names():
        recipe = load_recipe(name)
        assert Path(recipe.path) == PACKAGE / "recipes" / f"{name}.toml"
        assert SHIPPED.get((name, recipe.version)) == recipe.sha256, f"{name} changed without a new version"


def test_a_recipe_resolves_by_name_from_any_folder_and_by_path(tmp_path):
    code = ("from edgeseg.train.recipes import load_recipe; r = load_recipe('covid-infection'); "
            "print(r.path); print(r.sha256)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(PACKAGE / "recipes" / "covid-infection.toml"),
                                   SHIPPED[("covid-infection", 3)]]
    copy = tmp_path / "covid-infection.toml"
    changed = (PACKAGE / "recipes" / "covid-infection.toml").read_bytes().replace(b"epochs = 150", b"epochs = 7")
    copy.write_bytes(changed)
    from_path = load_recipe(str(copy))  # a file of a recipe's name wins over the shipped recipe
    assert from_path.sha256 == hashlib.sha256(changed).hexdigest() and from_path.values["epochs"] == 7
    with pytest.raises(EdgesegError, match=r"'recipes/covid-infection' is neither a file nor a known recipe "
                                           r"\(covid-infection, liver-ct\)"):
        load_recipe("recipes/covid-infection")


def test_covid_recipe_names_both_lesion_classes():
    assert load_recipe("covid-infection").values["labels"] == {"ggo": [1], "consolidation": [2]}


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\nversion = 1\n[train]\nepochs = \n", "does not parse as TOML"),
    ("name = 'x'\nversion = 1\n[train]\nepoch = 3\n", "unknown key 'epoch'"),
    ("name = 'x'\nversion = 1\nlearning = 3\n", "unknown top-level key 'learning'"),
    ("name = 'x'\nversion = 1\n[train]\nepochs = 'many'\n", "epochs = 'many' has the wrong type"),
    ("name = 'x'\n[train]\n", "integer version"),
    # a TOML boolean is not a number, nor a number a boolean, and the line names the file
    ("name = 'x'\nversion = 1\n[train]\nepochs = true\n", r"bad.toml: epochs = True has the wrong type \(expected an integer\)"),
    ("name = 'x'\nversion = 1\n[train]\nlr = false\n", r"bad.toml: lr = False has the wrong type \(expected a number\)"),
    ("name = 'x'\nversion = 1\n[train]\naugment = 1\n", r"bad.toml: augment = 1 has the wrong type \(expected true or false\)"),
    ("name = 'x'\nversion = 1\n[train]\nwindow = [true, 200]\n", r"bad.toml: window must be two numbers"),
    ("name = 'x'\nversion = 1\n[train]\nlabels = { liver = true }\n", r"bad.toml: labels liver must be a label value"),
    ("name = 'x'\nversion = 1\n[train]\nlabels = { liver = [1, true] }\n", r"bad.toml: labels liver must be a label value"),
])
def test_bad_recipes_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(EdgesegError, match=message):
        load_recipe(str(path))


def test_a_recipe_takes_choices_in_any_case_and_records_them_as_the_command_line_does(tmp_path):
    """fit = "PAD" was refused ("fit must be stretch or pad, got 'PAD'") while --fit PAD trains."""
    path = tmp_path / "loud.toml"
    path.write_text('name = "loud"\nversion = 1\n[train]\nmodel = "Mobile_UNet"\nfit = "PAD"\n'
                    'interpolation = "Area"\nmask = "LABELS"\nloss = "Tversky-Focal"\n')
    recipe = load_recipe(str(path))
    expected = {"model": "mobile_unet", "fit": "pad", "interpolation": "area", "mask": "labels", "loss": "tversky-focal"}
    assert recipe.values == expected and recipe.record()["values"] == expected
    assert recipe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # the file's bytes, as typed
    spec = build_spec(TrainConfig(**recipe.values))
    assert (spec.fit, spec.interpolation) == ("pad", "area")
    path.write_text('name = "loud"\nversion = 1\n[train]\nfit = "padded"\n')
    with pytest.raises(EdgesegError, match="fit must be stretch or pad, got 'padded'"):
        TrainConfig(**load_recipe(str(path)).values)


def test_bad_recipe_on_the_command_line_writes_nothing(tmp_path, assert_one_line_error):
    path = tmp_path / "bad.toml"
    path.write_text("name = 'x'\nversion = 1\n[train]\nwindow_hu = [0, 1]\n")
    out = tmp_path / "run"
    assert_one_line_error(edgeseg("train", "--recipe", path, "--data", "phantom", "--out", out, "--quiet"),
                          "unknown key 'window_hu'")
    assert not out.exists()
    assert_one_line_error(edgeseg("train", "--recipe", "no-such-recipe", "--out", out), "no-such-recipe")
    assert not out.exists()


def test_recipe_fit_reaches_the_spec():
    assert build_spec(TrainConfig(fit="pad")).fit == "pad"
    assert build_spec(TrainConfig()).fit == "stretch"


def test_recipe_trains_with_overrides_and_is_recorded(tmp_path, lesion_slices):
    import torch

    from edgeseg.export.bundle import build_manifest
    from edgeseg.models.checkpoint import read_checkpoint

    data = lesion_slices(6)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY)
    out = tmp_path / "run"
    proc = edgeseg("train", "--recipe", recipe, "--data", data, "--out", out, "--epochs", 1, "--folds", 3,
                   "--fold", 2, "--amp", "off", "--quiet")
    assert proc.returncode == 0, proc.stderr
    payload = read_checkpoint(out / "last.pt")
    cfg = payload["train_config"]
    assert cfg["epochs"] == 1 and payload["epoch"] == 1                # the flag beat the recipe's 5
    assert (cfg["loss"], cfg["class_weights"], cfg["size"]) == ("tversky-focal", [0.5, 1.0, 2.0], 32)
    assert payload["class_names"] == ["background", "faint", "bright"]
    assert len(payload["split"]["test"]) == 2 and len(payload["split"]["train"]) == 4
    record = payload["recipe"]
    assert (record["name"], record["version"]) == ("tiny-lesions", 3)
    assert record["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert record["values"]["epochs"] == 5
    spec = PreprocessSpec.from_dict(payload["spec"])
    manifest = build_manifest(payload, out / "last.pt", "0" * 64, spec, [], 1, None)
    assert manifest.source["recipe"] == record
    # A checkpoint from before recipes carries none, and its manifest has no recipe entry.
    del payload["recipe"]
    assert "recipe" not in build_manifest(payload, out / "last.pt", "0" * 64, spec, [], 1, None).source
    # The training slices' intensity is recorded for predict to read image input alike; none, none.
    payload["train_config"]["intensity"] = "window:-1100,300"
    assert build_manifest(payload, out / "last.pt", "0" * 64, spec, [], 1, None).source["intensity"] == "window:-1100,300"
    payload["train_config"]["intensity"] = None
    assert "intensity" not in build_manifest(payload, out / "last.pt", "0" * 64, spec, [], 1, None).source
    assert torch.load(out / "last.pt", weights_only=True)["recipe"]["name"] == "tiny-lesions"


def test_a_config_recorded_before_recipes_loads_with_the_old_behaviour():
    old = {"data": "phantom", "out": "runs/x", "labels": {"liver": [1]}, "epochs": 3, "window": [0, 255],
           "fractions": [0.7, 0.15, 0.15], "augment_p": 0.25}
    cfg = TrainConfig.from_dict(old)
    assert (cfg.loss, cfg.class_weights, cfg.folds, cfg.fit, cfg.mask, cfg.recipe) == ("dice-ce", None, 0, "stretch",
                                                                                     "auto", None)


# What liver-ct sets that `edgeseg train` does not default to: the recipe describes one data
# layout (MSD / LiTS slices stored as HU clipped to 0..255, binary masks); without --recipe the
# data's own kind decides (NIfTI and DICOM are HU, masks detected).
DATA_KEYS = {"intensity", "mask"}


def test_the_defaults_of_edgeseg_train_are_the_liver_recipe():
    """`edgeseg train` with no --recipe, TrainConfig() and liver-ct give the same model and
    schedule: a new default (issue: the architecture sweep) is a new liver-ct version plus these
    two places, and this test names whichever of them was left behind."""
    import click

    from edgeseg.cli.train import command
    from edgeseg.train.config import parse_labels, parse_pair

    liver = load_recipe("liver-ct").values
    ctx = click.Context(command)
    flags = {p.name: p.get_default(ctx) for p in command.params if isinstance(p, click.Option)}
    cli = {**flags, "window": list(parse_pair(flags["window"], "--window")),
           "labels": parse_labels(flags["labels"]), "augment": not flags["no_augment"]}
    cfg = TrainConfig()
    assert set(liver) - DATA_KEYS <= set(cli)
    for key, value in liver.items():
        if key in DATA_KEYS:
            continue
        assert cli[key] == value, f"edgeseg train --{key.replace('_', '-')} defaults to {cli[key]!r}, liver-ct to {value!r}"
        expected = list(value) if key == "window" else value
        got = list(getattr(cfg, key)) if key == "window" else getattr(cfg, key)
        assert got == expected, f"TrainConfig.{key} defaults to {got!r}, liver-ct to {value!r}"
    assert (cli["intensity"], cli["mask"], cfg.intensity, cfg.mask) == (None, "auto", None, "auto")


def test_a_recipe_for_slice_folders_trains_on_volumes_too(tmp_path, assert_one_line_error):
    """liver-ct says how to read the MSD slices' pixels (intensity): on NIfTI volumes that does not
    apply and is left out, where it refused every NIfTI or DICOM source; an intensity given on the
    command line for volumes is still refused."""
    from edgeseg.models.checkpoint import read_checkpoint

    data = tmp_path / "phantom"
    assert edgeseg("data", "synth", "--out", data, "--cases", "4", "--size", "64", "--slices", "8",
                   "--quiet").returncode == 0
    tiny = ["--data", data, "--size", "64", "--base", "4", "--depth", "2", "--epochs", "1", "--quiet"]
    done = edgeseg("train", "--recipe", "liver-ct", *tiny, "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr
    recorded = read_checkpoint(tmp_path / "run" / "last.pt")["train_config"]
    assert recorded["intensity"] is None and recorded["recipe"]["name"] == "liver-ct"
    assert_one_line_error(edgeseg("train", "--recipe", "liver-ct", *tiny, "--intensity", "hu-clipped:0,255",
                                  "--out", tmp_path / "run2"), "apply to slice folders only")
