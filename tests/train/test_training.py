"""Training end to end on a tiny phantom: loss falls, checkpoints load safely, resume continues."""

import json
from pathlib import Path

import pytest
import torch

from edgeseg.errors import CheckpointError, DataError
from edgeseg.models import ModelConfig
from edgeseg.spec import PreprocessSpec
from edgeseg.models.checkpoint import load_model, read_checkpoint
from edgeseg.runtime.postprocess_options import PostprocessOptions
from edgeseg.train.config import TrainConfig
from edgeseg.train.loop import train

PHANTOM = "phantom:cases=5,seed=1,size=64,slices=10"


def tiny(tmp_path, **kw) -> TrainConfig:
    base = dict(data=PHANTOM, out=str(tmp_path / "run"), size=64, base=4, depth=2, epochs=3, batch_size=8, lr=5e-3,
                window=(-200.0, 300.0), amp="off", fractions=(0.6, 0.2, 0.2))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny(tmp_path_factory.mktemp("t"), epochs=4)
    return cfg, train(cfg, progress=False)


def test_short_run_lowers_the_loss_and_writes_its_records(trained):
    cfg, result = trained
    history = result["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    run = Path(cfg.out)
    for name in ("best.pt", "last.pt", "metrics.csv", "metrics.json", "curves.png", "split.json"):
        assert (run / name).is_file(), name
    assert not (run / ".validation").exists()  # the epochs' validation predictions are scratch
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 4 and metrics["config"]["base"] == 4
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])


def test_checkpoint_loads_with_weights_only_and_holds_spec_and_labels(trained):
    cfg, _ = trained
    payload = torch.load(f"{cfg.out}/best.pt", weights_only=True)
    assert payload["class_names"] == ["background", "liver"]
    assert PreprocessSpec.from_dict(payload["spec"]) == PreprocessSpec(window=(-200, 300), size=(64, 64))
    assert ModelConfig.from_dict(payload["model"]) == ModelConfig(base=4, depth=2)
    post = payload["postprocess"]
    classes = PostprocessOptions.from_dict(post, 2).classes
    assert post["val_dice_post"] >= post["val_dice"]
    assert (post["val_dice_post"] > post["val_dice"]) == bool(classes)
    model, _ = load_model(f"{cfg.out}/best.pt")
    assert not model.training


def test_resume_continues_from_last_epoch(trained, tmp_path):
    cfg, result = trained
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cfg.out, run)
    more = tiny(tmp_path, out=str(run), epochs=5)
    resumed = train(more, resume=True, progress=False)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4, 5]
    assert resumed["history"][:4] == result["history"]


def test_resume_with_another_model_config_is_refused(trained, tmp_path):
    cfg, _ = trained
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cfg.out, run)
    with pytest.raises(CheckpointError, match="different model config.*base=8 vs 4|base=4 vs 8"):
        train(tiny(tmp_path, out=str(run), base=8, epochs=5), resume=True, progress=False)


def test_corrupt_and_foreign_checkpoints_are_refused(trained, tmp_path):
    cfg, _ = trained
    data = (tmp_path / "ok.pt")
    data.write_bytes(open(f"{cfg.out}/best.pt", "rb").read()[:3000])
    with pytest.raises(CheckpointError, match="not an edgeseg checkpoint \\(truncated or corrupt torch archive"):
        read_checkpoint(data)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an edgeseg checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="different model config"):
        load_model(f"{cfg.out}/best.pt", expected=ModelConfig(base=8, depth=2))


def test_window_outside_what_slices_can_represent_is_refused(tmp_path):
    slices = Path(__file__).parents[1] / "data" / "msd_liver_slices"
    with pytest.raises(DataError, match=r"window \[-100, 400\] HU reaches outside .* \[0, 255\]"):
        train(tiny(tmp_path, data=str(slices), window=(-100.0, 400.0)), progress=False)


def test_a_warm_up_too_long_for_an_integer_step_count_trains_all_in_warm_up(tmp_path):
    """warmup_epochs = 1e308 (a recipe key) ended in int()'s OverflowError once the data was read;
    a warm-up longer than the run keeps the learning rate near 0, as lr_at's ramp says."""
    result = train(tiny(tmp_path, epochs=1, warmup_epochs=1e308), progress=False)
    assert 0 < result["history"][0]["lr"] < 1e-15
