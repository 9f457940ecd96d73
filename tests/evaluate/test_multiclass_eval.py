"""Multi-class evaluation: per-class metrics by hand and by brute force, per-class overlays and
compare columns, and one-class (liver) outputs that keep their old form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from edgeseg.errors import DataError
from edgeseg.evaluate.overlay import OverlayItem, save_overlay_grid
from edgeseg.runtime.overlay import CLASS_COLOURS
from edgeseg.metrics import class_metrics, mean_slice_dice

CHEST = "chest-phantom:cases=3,size=48,slices=8,seed=4"
NAMES = ["background", "ggo", "consolidation"]


def test_three_class_metrics_computed_by_hand():
    truth = np.zeros((1, 6, 6), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0:2, 0:2] = 1  # ggo: 4 pixels
    pred[0, 0:2, 0:3] = 1  # 6 pixels, 4 shared: Dice 8/10, IoU 4/6
    truth[0, 4:6, 4:6] = 2  # consolidation: 4 pixels
    pred[0, 5, 5] = 2  # 1 pixel, shared: Dice 2/5, IoU 1/4
    result = class_metrics(pred, truth, 3, spacing=(1.0, 1.0, 1.0))
    assert result[1]["dice"] == pytest.approx(0.8) and result[1]["iou"] == pytest.approx(4 / 6)
    assert result[2]["dice"] == pytest.approx(0.4) and result[2]["iou"] == pytest.approx(0.25)
    # GGO: the extra column (0..1, 2) lies 1 from the truth; truth surface to pred surface is 0.
    # Its distances from pred surface: 4 zeros and 2 ones -> 95th percentile 1.0.
    assert result[1]["hd95"] == pytest.approx(1.0)
    # Consolidation: pixel (5,5) against the 2x2 truth: truth pixels (4,4) is sqrt(2) away.
    # Truth-to-pred distances 0, 1, 1, sqrt(2): 95th percentile (linear) = 1 + 0.85 * (sqrt(2) - 1).
    assert result[2]["hd95"] == pytest.approx(1 + 0.85 * (math.sqrt(2) - 1))


def test_mean_slice_dice_by_hand_for_one_class_and_merged_classes():
    truth = np.zeros((3, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 0, 0:2] = 1
    pred[0, 0, 0:2] = 2  # right place, wrong class
    truth[1, 1, 1] = 2
    pred[1, 1, 1] = 2  # perfect
    # slice 2 empty in both
    assert mean_slice_dice(pred, truth, [1]) == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert mean_slice_dice(pred, truth, [2]) == pytest.approx((0.0 + 1.0 + 1.0) / 3)
    assert mean_slice_dice(pred, truth, [1, 2]) == pytest.approx(1.0)  # the binary "any lesion" mask
    with pytest.raises(DataError, match="equal shape"):
        mean_slice_dice(pred[:2], truth, [1])


def _brute_hd95(p: np.ndarray, t: np.ndarray, spacing) -> float:
    structure = ndimage.generate_binary_structure(p.ndim, 1)  # face neighbours, as MONAI's surface
    surface = [m & ~ndimage.binary_erosion(m, structure=structure, border_value=0) for m in (p, t)]
    points = [np.argwhere(s) * np.asarray(spacing) for s in surface]
    d = cdist(points[0], points[1])
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@pytest.fixture(scope="module")
def chest_checkpoint(tmp_path_factory):
    from edgeseg.train.config import TrainConfig
    from edgeseg.train.loop import train

    out = tmp_path_factory.mktemp("chest")
    cfg = TrainConfig(data=CHEST, out=str(out), size=48, base=4, depth=2, epochs=2, batch_size=8, lr=5e-3,
                      augment=False, amp="off", window=(-1000.0, 200.0), labels={"ggo": [1], "consolidation": [2]})
    train(cfg, progress=False)
    return out


def test_chest_evaluation_reports_every_class_against_brute_force(chest_checkpoint, tmp_path):
    from edgeseg.data import open_dataset
    from edgeseg.evaluate.model_eval import evaluate_checkpoint
    from edgeseg.models.checkpoint import checkpoint_spec, load_model
    from edgeseg.runtime.segmenter import Segmenter

    result = evaluate_checkpoint(chest_checkpoint / "best.pt", CHEST, split="all", out=tmp_path, progress=False)
    assert result["classes"] == NAMES
    model, payload = load_model(chest_checkpoint / "best.pt")
    with Segmenter.from_module(model, checkpoint_spec(payload), dict(enumerate(NAMES))) as segmenter:
        for volume, case in zip(open_dataset(CHEST), result["cases"]):
            pred = segmenter.predict_volume(volume)
            for c, name in ((1, "ggo"), (2, "consolidation")):
                p, t = pred == c, volume.label == c
                m = case["metrics"][name]
                total = int(p.sum()) + int(t.sum())
                assert m["dice"] == pytest.approx(1.0 if total == 0 else 2 * int((p & t).sum()) / total)
                union = int((p | t).sum())
                assert m["iou"] == pytest.approx(1.0 if union == 0 else int((p & t).sum()) / union)
                if p.any() and t.any():
                    assert m["hd95"] == pytest.approx(_brute_hd95(p, t, volume.spacing))
                slices = [1.0 if not (a.any() or b.any()) else 2 * (a & b).sum() / (a.sum() + b.sum())
                          for a, b in zip(p, t)]
                assert case["slice_dice_by_class"][name] == pytest.approx(float(np.mean(slices)))
    written = json.loads((tmp_path / "eval.json").read_text())
    assert set(written["summary"]) == {"ggo", "consolidation"}
    assert set(written["slice_dice_by_class"]) == {"ggo", "consolidation"}
    table = (tmp_path / "eval.txt").read_text()
    assert "ggo dice" in table and "consolidation hd95" in table and "per class: ggo" in table
    assert (tmp_path / "worst_cases.png").is_file()


def test_multiclass_overlay_outlines_each_class_in_its_own_colour(tmp_path):
    import matplotlib.colors
    import matplotlib.image

    ct = np.full((64, 64), -800.0)
    truth = np.zeros((64, 64), np.uint8)
    truth[5:20, 5:20] = 1
    truth[40:60, 40:60] = 2
    path = tmp_path / "o.png"
    save_overlay_grid(path, [OverlayItem(ct, truth, truth, "t", ("ggo", "consolidation"))], window=(-1000, 200))
    image = matplotlib.image.imread(path)[..., :3]
    for colour in CLASS_COLOURS[:2]:
        rgb = np.asarray(matplotlib.colors.to_rgb(colour))
        assert (np.abs(image - rgb).max(axis=-1) < 0.1).sum() > 50  # an outline in that colour
    bad = truth.copy()
    bad[0, 0] = 3
    with pytest.raises(DataError, match="0..2"):
        save_overlay_grid(tmp_path / "x.png", [OverlayItem(ct, bad, None, "", ("ggo", "consolidation"))])
    assert not (tmp_path / "x.png").exists()


def _run(folder, per_class: dict[str, list[float]]):
    history = [{"epoch": e + 1, "val_dice": float(np.mean([v[e] for v in per_class.values()])),
                **{f"val_dice_{k}": v[e] for k, v in per_class.items()}, "seconds": 1.0} for e in range(2)]
    best = max(history, key=lambda h: h["val_dice"])
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"config": {"lr": 0.001}, "history": history,
                                                     "best": {"epoch": best["epoch"], "val_dice": best["val_dice"]}}))
    return folder


def test_compare_shows_each_class_validation_dice_at_the_best_epoch(tmp_path):
    from edgeseg.evaluate.compare import compare_runs

    a = _run(tmp_path / "a", {"ggo": [0.5, 0.7], "consolidation": [0.2, 0.1]})  # best epoch 2
    b = _run(tmp_path / "b", {"ggo": [0.6, 0.3], "consolidation": [0.4, 0.3]})  # best epoch 1
    rows, columns = compare_runs([a, b])
    assert "best_val_dice_ggo" in columns and "best_val_dice_consolidation" in columns
    assert (rows[0]["best_val_dice_ggo"], rows[0]["best_val_dice_consolidation"]) == (0.7, 0.1)
    assert (rows[1]["best_val_dice_ggo"], rows[1]["best_val_dice_consolidation"]) == (0.6, 0.4)
    liver = _run(tmp_path / "liver", {"liver": [0.8, 0.9]})
    _, columns = compare_runs([liver])
    assert not any(c.startswith("best_val_dice_") for c in columns)  # one class: as before


def test_liver_outputs_keep_their_one_class_form(tmp_path):
    from edgeseg.evaluate.case_scoring import panel_overlay, slice_panel
    from edgeseg.evaluate.model_eval import _table
    from edgeseg.data.volume import Volume, default_affine

    truth = np.zeros((2, 8, 8), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, 2:6, 2:6] = 1
    pred[0, 3:6, 2:6] = 1
    metrics = class_metrics(pred, truth, 2)
    vol = Volume(hu=np.zeros((2, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)),
                 case_id="c0", label=truth)
    score, item = panel_overlay(slice_panel(vol, pred, truth), [metrics[1]["dice"]], ["background", "liver"])
    assert score == pytest.approx(24 / 28) and item.class_names == ("liver",)
    # the Dice in the panel's title is the case's, which ranks it, not the drawn slice's
    assert item.title == f"c0 slice {vol.slice_ids[0]}  case Dice {24 / 28:.3f}"
    case = {"case_id": "c0", "slices": 2, "metrics": {"liver": metrics[1]}, "slice_dice_mean": 0.5}
    summary = {"liver": {m: {"mean": metrics[1][m]} for m in ("dice", "iou", "hd95")}}
    lines = _table([case], ["background", "liver"], summary, {"slice_dice_mean": 0.5}).splitlines()
    assert lines[0].split() == ["case", "slices", "liver", "dice", "liver", "iou", "liver", "hd95"]
    assert lines[-1] == "mean per-slice Dice (liver): 0.5000"


def test_training_curves_draw_one_validation_curve_per_class_when_there_are_several(tmp_path):
    import matplotlib.colors
    import matplotlib.image

    from edgeseg.report.curves import CLASS_CURVE_COLOURS, plot_training_curves

    def history(per_class: dict[str, float]):
        return [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.5, "lr": 1e-3,
                 **{f"val_dice_{name}": value * e / 8 for name, value in per_class.items()}} for e in range(1, 9)]

    def pixels_of(path, colour) -> int:
        image = matplotlib.image.imread(path)[..., :3]
        return int((np.abs(image - np.asarray(matplotlib.colors.to_rgb(colour))).max(axis=-1) < 0.06).sum())

    plot_training_curves(tmp_path / "two.png", history({"ggo": 0.8, "consolidation": 0.4}))
    plot_training_curves(tmp_path / "one.png", history({"liver": 0.9}))
    assert pixels_of(tmp_path / "two.png", CLASS_CURVE_COLOURS[0]) > 30
    assert pixels_of(tmp_path / "two.png", CLASS_CURVE_COLOURS[1]) > 30
    assert pixels_of(tmp_path / "one.png", CLASS_CURVE_COLOURS[0]) == 0  # one class: the plot as before


def test_a_checkpoint_scored_on_data_whose_dataset_json_names_its_classes_otherwise_warns(chest_checkpoint, tmp_path,
                                                                                         caplog):
    from edgeseg.data.phantom import write_phantom_dataset
    from edgeseg.evaluate.model_eval import evaluate_checkpoint

    abdomen = write_phantom_dataset(tmp_path / "abdomen", cases=2, shape=(8, 48, 48), seed=1)
    chest = write_phantom_dataset(tmp_path / "chest", cases=2, shape=(8, 48, 48), seed=1, kind="chest")
    with caplog.at_level("WARNING", logger="edgeseg.evaluate"):
        evaluate_checkpoint(chest_checkpoint / "best.pt", str(chest), split="all", progress=False)
    assert "dataset.json" not in caplog.text
    with caplog.at_level("WARNING", logger="edgeseg.evaluate"):
        evaluate_checkpoint(chest_checkpoint / "best.pt", str(abdomen), split="all", progress=False)
    warned = [r.getMessage() for r in caplog.records if "dataset.json" in r.getMessage()]
    assert len(warned) == 1 and "ggo (value 1 is 'liver')" in warned[0], caplog.text


def test_dataset_label_names_reads_msd_and_nnunet_forms(tmp_path):
    from edgeseg.data.dataset_names import dataset_label_names, unnamed_classes

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "cancer"}}))
    assert dataset_label_names(tmp_path) == {0: "background", 1: "liver", 2: "cancer"}
    assert unnamed_classes({"liver": [1, 2]}, dataset_label_names(tmp_path)) == []
    assert unnamed_classes({"Tumour": [2]}, dataset_label_names(tmp_path)) == ["Tumour (value 2 is 'cancer')"]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lung_lesion": [1, 2], "x": True}}))
    assert dataset_label_names(tmp_path) == {0: "background", 1: "lung_lesion", 2: "lung_lesion"}
    assert unnamed_classes({"lung-lesion": [1, 2]}, dataset_label_names(tmp_path)) == []
    (tmp_path / "dataset.json").write_text("{not json")
    assert dataset_label_names(tmp_path) == {}
    assert dataset_label_names(tmp_path / "absent") == {}


def test_chest_worst_cases_show_the_ct_in_a_lung_window(chest_checkpoint, tmp_path):
    """They were drawn in the abdominal soft-tissue window whatever the task: the lungs, the air
    around the body and the ground-glass in them were one black."""
    import matplotlib.image

    from edgeseg.evaluate.model_eval import evaluate_checkpoint

    evaluate_checkpoint(chest_checkpoint / "best.pt", CHEST, split="all", out=tmp_path, progress=False)
    image = matplotlib.image.imread(tmp_path / "worst_cases.png")[..., :3]
    grey = np.all(np.abs(image - image[..., :1]) < 0.01, axis=-1) & (image[..., 0] < 0.9)  # the CT, not the page
    # In the lung window (-1350..150 HU) air is 23 % grey and lung 30-40 %; nothing in the phantom is black.
    black = grey & (image[..., 0] < 0.05)
    assert grey.sum() > 10_000 and black.sum() < 0.02 * grey.sum()
    air = (-1000 + 1350) / 1500
    assert (np.abs(image[..., 0][grey] - air) < 0.03).sum() > 0.1 * grey.sum()


def test_a_case_of_several_classes_is_ranked_by_the_mean_of_their_dice():
    """The overlay panel of a case of two classes ranks it by the mean of its classes' Dice (the
    oracle: Dice counted with numpy), and names each class's in its title."""
    from edgeseg.evaluate.case_scoring import panel_overlay, slice_panel
    from edgeseg.data.volume import Volume, default_affine

    truth = np.zeros((2, 8, 8), np.uint8)
    truth[0, 1:5, 1:5], truth[1, 4:8, 4:8] = 1, 2
    pred = truth.copy()
    pred[0, 1:3, 1:5] = 0  # ggo half found
    pred[1, 4:8, 4:8] = 2
    pred[1, 0:2, 0:2] = 2  # consolidation over-segmented
    dices = [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum()) for c in (1, 2)]
    assert dices == [pytest.approx(2 / 3), pytest.approx(8 / 9)]
    vol = Volume(hu=np.zeros((2, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0), affine=default_affine((1.0, 1.0, 1.0)),
                 case_id="c1", label=truth)
    score, item = panel_overlay(slice_panel(vol, pred, truth), dices, ["background", "ggo", "consolidation"])
    assert score == pytest.approx((2 / 3 + 8 / 9) / 2)
    assert item.title.endswith(f"\ncase Dice ggo {2 / 3:.3f}  consolidation {8 / 9:.3f}")
    assert item.class_names == ("ggo", "consolidation")
