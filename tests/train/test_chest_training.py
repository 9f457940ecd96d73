"""The chest phantom (two lesion classes) trains to a useful per-class Dice in a short run.

A short run with the infection recipe's loss (Dice + class-weighted cross-entropy) on 96x96 chest
phantoms must learn both classes: ground-glass patches (-600..-300 HU) and consolidations
(-100..50 HU) inside air-like lungs. A model that predicts no lesion scores 0 for each class on
the validation cases (Dice pooled over a case's slices), so the floor below is a real one. The
run is the suite's chest bundle (``chest_bundle_run`` in tests/conftest.py), which the DICOM SEG
and slice-folder evaluation tests use too.
"""

import json

from edgeseg.data.chest_phantom import CHEST_LABELS

from tests.conftest import CHEST_TRAINING


def test_chest_phantom_trains_both_lesion_classes(chest_bundle_run):
    assert list(CHEST_TRAINING["labels"]) == ["ggo", "consolidation"]
    assert CHEST_TRAINING["labels"] == {name: [value] for name, value in CHEST_LABELS.items()}
    metrics = json.loads((chest_bundle_run / "train" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, CHEST_TRAINING["epochs"] + 1))
    row = next(r for r in metrics["history"] if r["epoch"] == metrics["best"]["epoch"])
    assert row["val_dice_ggo"] > 0.2 and row["val_dice_consolidation"] > 0.2, row
