"""Region-based training end to end: a recipe's ``regions`` and ``--regions`` train a region
model recorded in the checkpoint, a resume with other regions is refused, and bad regions are
one-line errors that write nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.train.recipes import load_recipe

RECIPE = """name = "tiny-regions"
version = 1
[train]
regions = [[1, 2], [2]]
labels = { faint = [1], bright = [2] }
class_weights = [0.5, 1, 2]
mask = "labels"
case_pattern = "file"
size = 32
base = 4
depth = 2
epochs = 1
"""


def edgeseg(*args):
    return subprocess.run([sys.executable, "-m", "edgeseg.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_a_recipe_s_regions_train_a_region_model_recorded_in_the_checkpoint(tmp_path, lesion_slices,
                                                                            assert_one_line_error):
    import torch

    from edgeseg.models.checkpoint import load_model

    data = lesion_slices(6)
    recipe = tmp_path / "regions.toml"
    recipe.write_text(RECIPE)
    assert load_recipe(str(recipe)).values["regions"] == [[1, 2], [2]]
    out = tmp_path / "run"
    done = edgeseg("train", "--recipe", recipe, "--data", data, "--out", out, "--folds", 3, "--amp", "off", "--quiet")
    assert done.returncode == 0, done.stderr
    model, payload = load_model(out / "last.pt")
    assert payload["model"]["regions"] == [[1, 2], [2]] and payload["train_config"]["regions"] == [[1, 2], [2]]
    assert payload["recipe"]["values"]["regions"] == [[1, 2], [2]]
    assert model.net.head.out_channels == 2  # one sigmoid logit per region under the scores head
    with torch.no_grad():
        scores = model(torch.randn(2, 1, 32, 32))
    assert scores.shape == (2, 3, 32, 32) and bool((scores[:, 0] == 0).all())
    # the same run continued with other regions is another model: refused, the checkpoint kept
    before = (out / "last.pt").read_bytes()
    assert_one_line_error(edgeseg("train", "--recipe", recipe, "--data", data, "--out", out, "--folds", 3,
                                  "--regions", "1,2", "--epochs", 2, "--resume", "--quiet"),
                          "different model config (regions=[[1, 2], [2]] vs [[1], [2]])")
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("regions, message", [
    ("1+2,1", "region 0 of [[1, 2], [1]] decodes to class 2"),
    ("1+3,2", "names class 3, not a foreground class 1..2"),
    ("1", "class 2 is in no region"),
    ("1+x", "regions must look like '1+2,2'"),
])
def test_bad_regions_on_the_command_line_write_nothing(tmp_path, regions, message, assert_one_line_error):
    out = tmp_path / "run"
    assert_one_line_error(edgeseg("train", "--data", "phantom:cases=3,size=32,slices=4", "--labels", "a=1,b=2",
                                  "--regions", regions, "--out", out, "--quiet"), message)
    assert not out.exists()


def test_a_recipe_s_regions_of_the_wrong_shape_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nversion = 1\n[train]\nregions = [[1, 2], ["2"]]\n')
    with pytest.raises(EdgesegError, match="regions must be a list of lists of class numbers"):
        load_recipe(str(path))
    path.write_text('name = "x"\nversion = 1\n[train]\nregions = "1+2,2"\n')
    with pytest.raises(EdgesegError, match="regions = '1\\+2,2' has the wrong type"):
        load_recipe(str(path))

