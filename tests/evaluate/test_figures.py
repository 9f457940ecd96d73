"""Overlay and training-curve PNGs: valid files, not blank, contours where the masks are."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import DataError
from edgeseg.report.curves import plot_training_curves
from edgeseg.evaluate.overlay import OverlayItem, save_overlay, save_overlay_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZE = 64


def _read_png(path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)[..., :3]


def _red(image):
    return (image[..., 0] > 0.8) & (image[..., 1] < 0.3) & (image[..., 2] < 0.3)


def _green(image):
    return (image[..., 1] > 0.8) & (image[..., 0] < 0.3) & (image[..., 2] < 0.3)


def _square(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows, cols] = True
    return mask


def _image_box(image) -> tuple[int, int, int, int]:
    # 70 HU in the (-100, 240) window is mid grey (0.5); the figure background is white.
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


def test_overlay_draws_truth_green_and_prediction_red_at_the_mask_boundaries(tmp_path):
    ct = np.full((SIZE, SIZE), 70.0)
    truth = _square(slice(6, 20), slice(4, 40))
    pred = _square(slice(30, 55), slice(36, 57))
    path = tmp_path / "overlay.png"
    save_overlay(path, ct, truth=truth, pred=pred, title="case 7")

    image = _read_png(path)
    assert image.shape[0] > 2 * SIZE and image.shape[1] > 2 * SIZE
    box = _image_box(image)
    # The slice is drawn square and scaled up at least 4x.
    assert abs((box[1] - box[0]) - (box[3] - box[2])) <= 2 and box[1] - box[0] >= 4 * SIZE
    tolerance = 3 + 0.02 * (box[3] - box[2])
    _assert_outline_at(_green(image), box, _expected_box(truth, box), tolerance)
    _assert_outline_at(_red(image), box, _expected_box(pred, box), tolerance)
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_overlay_without_masks_has_no_contours_and_masks_at_the_border_are_outlined(tmp_path):
    ct = np.linspace(-300, 400, SIZE * SIZE).reshape(SIZE, SIZE)
    save_overlay(tmp_path / "plain.png", ct)
    plain = _read_png(tmp_path / "plain.png")
    assert not _red(plain).any() and not _green(plain).any()
    assert plain.std() > 0.05  # the windowed gradient is visible

    everything = np.ones((SIZE, SIZE), dtype=bool)
    save_overlay(tmp_path / "full.png", ct, pred=everything)
    assert _red(_read_png(tmp_path / "full.png")).sum() > 4 * SIZE


def test_overlay_grid_lays_out_panels(tmp_path):
    ct = np.full((SIZE, SIZE), 70.0)
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
    assert _red(image).any() and _green(image).any()


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


def test_training_curves_reject_empty_or_incomplete_history(tmp_path):
    with pytest.raises(DataError, match="empty"):
        plot_training_curves(tmp_path / "c.png", [])
    broken = _history(3)
    del broken[1]["val_dice"]
    with pytest.raises(DataError, match="val_dice"):
        plot_training_curves(tmp_path / "c.png", broken)
    assert list(tmp_path.iterdir()) == []
