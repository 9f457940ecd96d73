"""PNG overlays of a CT slice with ground-truth and predicted mask contours.

One class: ground truth in green, prediction in red. Several classes: one colour per class
(:data:`CLASS_COLOURS`), ground truth drawn solid and prediction dashed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgeseg.errors import DataError
from edgeseg.report.output import new_figure, save_png

TRUTH_COLOUR = "#00ff00"
PRED_COLOUR = "#ff0000"
DEFAULT_WINDOW = (-100.0, 240.0)
# Saturated hues that stay apart from each other and from the grey CT; class c gets entry c - 1.
CLASS_COLOURS = ("#00e5ff", "#ff00ff", "#ffd700", "#ff4500", "#7fff00", "#1e90ff", "#ff69b4", "#ffffff")


@dataclass(frozen=True)
class OverlayItem:
    """One panel of an overlay: a (H, W) CT slice in HU and optional (H, W) masks.

    With ``class_names`` (the names of classes 1..K) ``truth`` and ``pred`` are label maps
    with values 0..K and each class is outlined in its own colour; without, they are masks.
    """

    ct_slice_hu: np.ndarray
    truth: np.ndarray | None = None
    pred: np.ndarray | None = None
    title: str = ""
    class_names: tuple[str, ...] = ()


def window_to_unit(ct_slice_hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Map HU to [0, 1] grey: ``window[0]`` and below -> 0, ``window[1]`` and above -> 1."""
    low, high = _check_window(window)
    return np.clip((np.asarray(ct_slice_hu, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def _check_window(window) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in window)
    except (TypeError, ValueError):
        raise DataError(f"window must be two HU values (low, high), got {window!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise DataError(f"window must be two finite HU values with low < high, got {window!r}")
    return low, high


def _checked_item(item) -> OverlayItem:
    if isinstance(item, Mapping):
        item = OverlayItem(**item)
    elif not isinstance(item, OverlayItem):
        raise DataError(f"overlay items must be OverlayItem or dict, got {type(item).__name__}")
    ct = np.asarray(item.ct_slice_hu)
    if ct.ndim != 2 or ct.size == 0:
        raise DataError(f"CT slice must be a non-empty (H, W) array, got shape {ct.shape}")
    classes = tuple(str(name) for name in item.class_names)
    masks = {}
    for name in ("truth", "pred"):
        mask = getattr(item, name)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != ct.shape:
                raise DataError(f"{name} mask shape {mask.shape} differs from CT slice shape {ct.shape}")
            if classes and mask.size and (not np.issubdtype(mask.dtype, np.integer) or mask.min() < 0
                                          or mask.max() > len(classes)):
                raise DataError(f"{name} label map must hold integers 0..{len(classes)} for classes {list(classes)}")
            mask = mask if classes else mask.astype(bool, copy=False)
        masks[name] = mask
    return OverlayItem(ct, masks["truth"], masks["pred"], str(item.title), classes)


def _draw_contour(ax, mask: np.ndarray | None, colour: str, linestyle: str = "solid") -> None:
    if mask is None or not mask.any():
        return
    # A False border closes contours of masks that touch the image edge; the extra row and
    # column sit at index -1 and H / W so the contour stays aligned with imshow's pixels.
    padded = np.pad(mask, 1).astype(np.float32)
    height, width = mask.shape
    ax.contour(
        np.arange(-1, width + 1), np.arange(-1, height + 1), padded,
        levels=[0.5], colors=[colour], linewidths=1.5, linestyles=[linestyle],
    )


def _draw_panel(ax, item: OverlayItem, window) -> None:
    height, width = item.ct_slice_hu.shape
    ax.imshow(window_to_unit(item.ct_slice_hu, window), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if item.class_names:
        for cls in range(1, len(item.class_names) + 1):
            colour = CLASS_COLOURS[(cls - 1) % len(CLASS_COLOURS)]
            _draw_contour(ax, None if item.truth is None else item.truth == cls, colour)
            _draw_contour(ax, None if item.pred is None else item.pred == cls, colour, "dashed")
    else:
        _draw_contour(ax, item.truth, TRUTH_COLOUR)
        _draw_contour(ax, item.pred, PRED_COLOUR)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    if item.title:
        ax.set_title(item.title, fontsize=9)


def _add_legend(figure, items: Sequence[OverlayItem]) -> None:
    from matplotlib.lines import Line2D

    handles = []
    classes = next((item.class_names for item in items if item.class_names), ())
    if classes:
        handles += [Line2D([], [], color=CLASS_COLOURS[k % len(CLASS_COLOURS)], linewidth=2, label=name)
                    for k, name in enumerate(classes)]
        handles += [Line2D([], [], color="black", linewidth=1.5, label="ground truth"),
                    Line2D([], [], color="black", linewidth=1.5, linestyle="dashed", label="prediction")]
    elif any(item.truth is not None for item in items):
        handles.append(Line2D([], [], color=TRUTH_COLOUR, linewidth=2, label="ground truth"))
    if not classes and any(item.pred is not None for item in items):
        handles.append(Line2D([], [], color=PRED_COLOUR, linewidth=2, label="prediction"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)


def save_overlay(
    path: str | os.PathLike,
    ct_slice_hu: np.ndarray,
    truth: np.ndarray | None = None,
    pred: np.ndarray | None = None,
    window: Sequence[float] = DEFAULT_WINDOW,
    title: str = "",
    dpi: int = 100,
) -> None:
    """Write a PNG of one CT slice (grey, HU ``window``) with mask contours, a legend and a title.

    ``truth`` is outlined in green, ``pred`` in red; both are optional (H, W) masks matching
    the slice. The file is written atomically.
    """
    save_overlay_grid(path, [OverlayItem(ct_slice_hu, truth, pred)], window=window, columns=1, title=title, dpi=dpi)


def save_overlay_grid(
    path: str | os.PathLike,
    items: Sequence[OverlayItem | Mapping],
    window: Sequence[float] = DEFAULT_WINDOW,
    columns: int = 4,
    title: str = "",
    dpi: int = 100,
    panel_inches: float = 4.0,
) -> None:
    """Write a PNG with several overlays (e.g. the worst cases) in a grid of ``columns``.

    Each item is an :class:`OverlayItem` or a dict with its fields (``ct_slice_hu``, ``truth``,
    ``pred``, ``title``). Slices may differ in size; every panel gets ``panel_inches`` of
    width. ``title`` goes above the grid. The file is written atomically.
    """
    checked = [_checked_item(item) for item in items]
    if not checked:
        raise DataError("save_overlay_grid needs at least one item")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise DataError(f"columns must be a positive integer, got {columns!r}")
    _check_window(window)
    ncols = min(int(columns), len(checked))
    nrows = math.ceil(len(checked) / ncols)
    aspect = max(item.ct_slice_hu.shape[0] / item.ct_slice_hu.shape[1] for item in checked)
    figure = new_figure((panel_inches * ncols, panel_inches * aspect * nrows + 0.6))
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, item in zip(axes, checked):
        _draw_panel(ax, item, window)
    for ax in axes[len(checked):]:
        ax.set_axis_off()
    _add_legend(figure, checked)
    if title:
        figure.suptitle(title)
    save_png(path, figure, dpi=dpi)
