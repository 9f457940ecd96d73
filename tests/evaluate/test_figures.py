"""Overlay and training-curve PNGs: valid files, not blank, contours where the masks are, in
each class's colour (truth solid, prediction dashed), with nothing cut off at the edges."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.report.curves import plot_training_curves, training_curves_figure
from edgeseg.evaluate.overlay import OverlayItem, save_overlay, save_overlay_grid
from edgeseg.runtime.overlay import CLASS_COLOURS, class_colour

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 64


def _read_png(path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)[..., :3]


def _in_colour(image, colour: str, tolerance: float = 0.08):
    import matplotlib.colors

    return np.abs(image - np.asarray(matplotlib.colors.to_rgb(colour))).max(axis=-1) < tolerance


def _class1(image):
    return _in_colour(image, class_colour(1))


def _square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows, cols] = True
    return mask


def _image_box(image) -> tuple[int, int, int, int]:
    # 40 HU in the soft-tissue window (-160, 240) is mid grey (0.5); the figure background is white.
    # Rows and columns mostly grey belong to the slice; anti-aliased text has a few grey pixels.
    grey = np.all(np.abs(image - 0.5) < 0.03, axis=-1)
    rows = np.flatnonzero(grey.mean(axis=1) > 0.3)
    cols = np.flatnonzero(grey.mean(axis=0) > 0.3)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _expected_box(mask, box) -> tuple[float, float, float, float]:
    """Where the outline of ``mask`` should appear in the PNG, in PNG pixels."""
    top, bottom, left, right = box
    rows, cols = np.nonzero(mask)
    scale_y, scale_x = (bottom - top) / SIZE, (right - left) / SIZE
    return (top + rows.min() * scale_y, top + (rows.max() + 1) * scale_y,
            left + cols.min() * scale_x, left + (cols.max() + 1) * scale_x)


def _assert_outline_at(colour_mask, box, expected, tolerance):
    rows, cols = np.nonzero(colour_mask[box[0]:box[1], box[2]:box[3]])
    found = (rows.min() + box[0], rows.max() + 1 + box[0], cols.min() + box[2], cols.max() + 1 + box[2])
    assert np.allclose(found, expected, atol=tolerance), (found, expected)


def test_overlay_outlines_truth_and_prediction_in_the_class_colour_at_the_mask_boundaries(tmp_path):
    ct = np.full((SIZE, SIZE), 40.0)
    truth = _square(slice(6, 20), slice(4, 40))
    pred = _square(slice(30, 55), slice(36, 57))
    for name, masks in (("truth", {"truth": truth}), ("pred", {"pred": pred})):
        save_overlay(tmp_path / f"{name}.png", ct, title="case 7", **masks)
    for name, mask in (("truth", truth), ("pred", pred)):
        image = _read_png(tmp_path / f"{name}.png")
        assert image.shape[0] > 2 * SIZE and image.shape[1] > 2 * SIZE
        box = _image_box(image)
        # The slice is drawn square and scaled up at least 4x.
        assert abs((box[1] - box[0]) - (box[3] - box[2])) <= 2 and box[1] - box[0] >= 4 * SIZE
        tolerance = 3 + 0.02 * (box[3] - box[2])
        _assert_outline_at(_class1(image), box, _expected_box(mask, box), tolerance)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.png", "truth.png"]


def test_prediction_is_dashed_and_truth_solid(tmp_path):
    """Truth and prediction share the class's colour and differ by line style, which a reader
    who cannot tell red from green still sees: the dashed outline has gaps."""
    ct = np.full((SIZE, SIZE), 40.0)
    mask = _square(slice(10, 50), slice(10, 50))
    save_overlay(tmp_path / "truth.png", ct, truth=mask)
    save_overlay(tmp_path / "pred.png", ct, pred=mask)
    solid, dashed = (_class1(_read_png(tmp_path / f"{n}.png")).sum() for n in ("truth", "pred"))
    assert 0.3 * solid < dashed < 0.85 * solid


def test_class_colours_are_distinct_and_none_is_pure_red_or_green():
    import matplotlib.colors

    rgb = np.array([matplotlib.colors.to_rgb(c) for c in CLASS_COLOURS])
    assert len({tuple(c) for c in rgb}) == len(CLASS_COLOURS)
    assert not any(np.allclose(c, (1, 0, 0), atol=0.2) or np.allclose(c, (0, 1, 0), atol=0.2) for c in rgb)


@pytest.mark.parametrize("classes", [(), ("liver",), ("ggo", "consolidation")])
def test_a_single_panel_keeps_its_title_and_legend_inside_the_image(tmp_path, classes):
    """The legend and the title of a one-panel grid ran off both sides of the 4-inch figure
    ("orst cases: ... (dashe", "consolidation  ground truth  pr")."""
    ct = np.full((SIZE, SIZE), -800.0)
    labels = _square(slice(10, 30), slice(10, 30)).astype(np.uint8)
    labels[40:50, 40:50] = len(classes) or 1
    item = OverlayItem(ct, labels if classes else labels > 0, labels if classes else labels > 0,
                       "case_007 slice 7", classes)
    save_overlay_grid(tmp_path / "w.png", [item], window=(-1350, 150),
                      title="worst cases: truth (solid) vs prediction (dashed)")
    image = _read_png(tmp_path / "w.png")
    ink = np.any(image < 0.9, axis=-1)
    assert not ink[:, :2].any() and not ink[:, -2:].any() and not ink[:2].any() and not ink[-2:].any()
    for cls in range(1, max(1, len(classes)) + 1):  # each class's colour, in the panel and its legend entry
        assert _in_colour(image, class_colour(cls)).sum() > 20


def test_overlay_without_masks_has_no_contours_and_masks_at_the_border_are_outlined(tmp_path):
    ct = np.linspace(-300, 400, SIZE * SIZE).reshape(SIZE, SIZE)
    save_overlay(tmp_path / "plain.png", ct)
    plain = _read_png(tmp_path / "plain.png")
    assert not _class1(plain).any()
    assert plain.std() > 0.05  # the windowed gradient is visible

    everything = np.ones((SIZE, SIZE), dtype=bool)
    save_overlay(tmp_path / "full.png", ct, pred=everything)
    assert _class1(_read_png(tmp_path / "full.png")).sum() > 4 * SIZE


def test_overlay_grid_lays_out_panels(tmp_path):
    ct = np.full((SIZE, SIZE), 40.0)
    truth = _square(slice(10, 31), slice(8, 29))
    items = [OverlayItem(ct, truth, truth, title=f"slice {k}") for k in range(3)]
    items.append({"ct_slice_hu": ct, "truth": truth, "title": "as dict"})
    path = tmp_path / "worst.png"
    save_overlay_grid(path, items, columns=2, title="worst cases")
    image = _read_png(path)
    grey = np.all(np.abs(image - 0.5) < 0.03, axis=-1)
    # Two panel columns: the grey pixels of the middle row split into two runs.
    middle_row = grey[np.nonzero(grey.any(axis=1))[0][SIZE]]
    runs = np.count_nonzero(np.diff(middle_row.astype(int)) == 1) + int(middle_row[0])
    assert runs == 2
    assert _class1(image).any()


def test_overlay_rejects_mismatched_masks_and_bad_windows(tmp_path):
    ct = np.zeros((8, 8))
    with pytest.raises(DataError, match=r"\(8, 9\)"):
        save_overlay(tmp_path / "x.png", ct, truth=np.zeros((8, 9), bool))
    with pytest.raises(DataError, match="low < high"):
        save_overlay(tmp_path / "x.png", ct, window=(240, -100))
    with pytest.raises(DataError, match="at least one"):
        save_overlay_grid(tmp_path / "x.png", [])
    assert list(tmp_path.iterdir()) == []


def _history(epochs: int) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.9 - 0.02 * abs(e - 6),
         "lr": 1e-3 * 0.8 ** e, "seconds": 12.0}
        for e in range(1, epochs + 1)
    ]


def test_training_curves_png_is_written_and_not_blank(tmp_path):
    path = tmp_path / "curves.png"
    plot_training_curves(path, _history(10))
    image = _read_png(path)
    assert image.shape[1] > image.shape[0] > 200  # two panels side by side
    assert image.std() > 0.05
    # val Dice in matplotlib's green, the best-epoch star in its red.
    tab_green, tab_red = np.array([0.173, 0.627, 0.173]), np.array([0.839, 0.153, 0.157])
    assert (np.abs(image - tab_green).max(axis=-1) < 0.05).sum() > 50
    assert (np.abs(image - tab_red).max(axis=-1) < 0.05).sum() > 50
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def _lr_history(epochs: int, lr) -> list[dict]:
    return [{**entry, "lr": lr(entry["epoch"])} for entry in _history(epochs)]


CURVE_HISTORIES = {
    "step-decay": _history(10),
    "warm-up-then-cosine": _lr_history(30, lambda e: 1e-3 * min(1.0, e / 5) * (1 + np.cos(np.pi * e / 30)) / 2 + 1e-6),
    "constant": _lr_history(10, lambda e: 1e-3),
    "per-class": [{**entry, "val_dice_liver": 0.85, "val_dice_spine": 0.7, "val_dice_kidney": 0.6}
                  for entry in _history(10)],
}


def _segment_points(line, per_segment: int = 40) -> np.ndarray:
    """The line's data points and points along each segment between them, in display pixels."""
    xy = line.get_xydata()
    xy = xy[np.isfinite(xy).all(axis=1)]
    if len(xy) > 1:
        xy = np.concatenate([np.linspace(a, b, per_segment) for a, b in zip(xy[:-1], xy[1:])])
    return line.get_transform().transform(xy)


@pytest.mark.parametrize("name", list(CURVE_HISTORIES))
def test_training_curve_legends_cover_no_curve(name):
    """The Dice panel's legend (loc="best" on that axis) was drawn over the learning-rate line of
    its twin axis, which that placement cannot see."""
    figure = training_curves_figure(CURVE_HISTORIES[name], title="run")
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert len(legends) == 2  # losses, and Dice with the learning rate
    lines = [line for ax in figure.axes for line in ax.get_lines()]
    assert any(line.get_label() == "learning rate" for line in lines)
    whole = figure.bbox
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
        for line in lines:
            points = _segment_points(line)
            inside = ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                      & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))
            assert not inside.any(), f"the legend covers {line.get_label()!r}"


def test_training_curves_reject_empty_or_incomplete_history(tmp_path):
    with pytest.raises(DataError, match="empty"):
        plot_training_curves(tmp_path / "c.png", [])
    broken = _history(3)
    del broken[1]["val_dice"]
    with pytest.raises(DataError, match="val_dice"):
        plot_training_curves(tmp_path / "c.png", broken)
    assert list(tmp_path.iterdir()) == []
