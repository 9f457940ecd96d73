"""A sweep file's [recipe] regions (nnU-Net's region-based training, as a recipe's ``regions`` and
`edgeseg train --regions`): each point trains a region model recorded in its checkpoint and
bundle, its commands.sh train line rebuilds the same training, and malformed regions are one-line
errors that write nothing."""

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()
TWO_CLASSES = SWEEP.replace("epochs = 3", 'labels = "liver=1,kidney=3"\nepochs = 2')


def _sweep(sweep_file: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", "sweep", str(sweep_file), "--out", str(out), "--quiet",
                           *args], capture_output=True, text=True, timeout=900)


def test_a_sweep_point_trains_the_regions_of_its_file_and_its_command_says_them(tmp_path):
    from edgeseg.cli.train import command as train_command, config_from_options
    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.sweep.config import load_sweep, train_config

    (tmp_path / "sweep.toml").write_text(TWO_CLASSES.replace("augment = false", "augment = false\nregions = [[1, 2], [2]]"))
    out = tmp_path / "out"
    proc = _sweep(tmp_path / "sweep.toml", out, "--point", "unet-b4-d2-s64")
    assert proc.returncode == 0, proc.stderr
    folder = out / "points" / "unet-b4-d2-s64"
    payload = read_checkpoint(folder / "run" / "best.pt")
    assert payload["model"]["regions"] == [[1, 2], [2]] and payload["train_config"]["regions"] == [[1, 2], [2]]
    manifest = json.loads((folder / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["regions"] == [[1, 2], [2]] and manifest["model"]["num_classes"] == 3

    result = json.loads((folder / "result.json").read_text())
    train_line = next(line for line in result["commands"] if line.startswith("edgeseg train"))
    assert "--regions 1+2,2" in train_line
    assert train_line in (out / "commands.sh").read_text()
    ctx = train_command.make_context("train", shlex.split(train_line)[2:])
    with ctx:
        rebuilt = config_from_options(ctx.params, None, ctx)
    sweep = load_sweep(tmp_path / "sweep.toml")
    point = next(p for p in sweep.points if p.id == "unet-b4-d2-s64")
    expected = dataclasses.asdict(train_config(sweep, point, folder / "run"))
    assert dataclasses.asdict(rebuilt) == expected and expected["regions"] == [[1, 2], [2]]


def test_the_sweep_s_regions_override_those_of_its_named_recipe(tmp_path):
    from edgeseg.sweep.config import load_sweep, train_config

    recipe = tmp_path / "task.toml"
    recipe.write_text('name = "task"\nversion = 1\n[train]\nlabels = { a = [1], b = [3] }\nregions = [[1], [2]]\n')
    text = SWEEP.replace("epochs = 3\n", f'recipe = "{recipe}"\nepochs = 3\n')
    (tmp_path / "own.toml").write_text(text)
    (tmp_path / "over.toml").write_text(text.replace("epochs = 3\n", "epochs = 3\nregions = [[1, 2], [2]]\n"))
    for name, regions in (("own.toml", [[1], [2]]), ("over.toml", [[1, 2], [2]])):
        sweep = load_sweep(tmp_path / name)
        assert [train_config(sweep, p, tmp_path / "run").regions for p in sweep.points] == [regions] * 2


@pytest.mark.parametrize("regions, fragment", [
    ('"1+2,2"', "sweep.toml: [recipe] regions must be a list, got '1+2,2'"),
    ("[1, 2]", "sweep.toml: point unet-b4-d2-s64: regions must be a list of lists of class numbers, e.g. [[1, 2], [2]], "
               "got [1, 2]"),
    ("[[1, true], [2]]", "regions must be a list of lists of class numbers"),
    ('[[1, "2"], [2]]', "regions must be a list of lists of class numbers"),
    ("[[1, 2], [1]]", "sweep.toml: point unet-b4-d2-s64: region 0 of [[1, 2], [1]] decodes to class 2"),
    ("[[1, 3], [2]]", "region 0 of [[1, 3], [2]] names class 3, not a foreground class 1..2"),
    ("[[1]]", "class 2 is in no region"),
    ("[[], [2]]", "region 0 of [[], [2]] is empty"),
])
def test_bad_regions_in_a_sweep_file_are_one_line_errors_that_write_nothing(tmp_path, regions, fragment,
                                                                          assert_one_line_error):
    (tmp_path / "sweep.toml").write_text(TWO_CLASSES.replace("augment = false", f"augment = false\nregions = {regions}"))
    assert_one_line_error(_sweep(tmp_path / "sweep.toml", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()
