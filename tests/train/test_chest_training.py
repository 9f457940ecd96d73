"""The chest phantom (two lesion classes) trains to a useful per-class Dice in a short run.

A short run with the infection recipe's loss (Dice + class-weighted cross-entropy) on 96x96 chest
phantoms must learn both classes: ground-glass patches (-600..-300 HU) and consolidations
(-100..50 HU) inside air-like lungs. A model that predicts no lesion scores 0 for each class on
the validation cases (Dice pooled over a case's slices), so the floor below is a real one.
"""

import pytest

from edgeseg.data.chest_phantom import CHEST_LABELS


@pytest.mark.usefixtures("one_torch_thread")
def test_chest_phantom_trains_both_lesion_classes(tmp_path):
    pytest.importorskip("torch")
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    labels = {name: [value] for name, value in CHEST_LABELS.items()}
    assert list(labels) == ["ggo", "consolidation"]
    cfg = TrainConfig(data="chest-phantom:cases=8,size=96,slices=16,seed=0", out=str(tmp_path / "run"), size=96,
                      base=8, depth=3, epochs=20, batch_size=8, lr=5e-3, augment=False, window=(-1000.0, 200.0),
                      labels=labels, loss="dice-ce", class_weights=[0.5, 1.0, 2.0], seed=0)
    result = train(cfg, progress=False)
    row = next(r for r in result["history"] if r["epoch"] == result["best"]["epoch"])
    assert row["val_dice_ggo"] > 0.2 and row["val_dice_consolidation"] > 0.2, row
