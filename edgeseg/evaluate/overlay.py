"""PNG overlays of a CT slice with ground-truth and predicted mask contours.

Each class has its colour (:func:`edgeseg.runtime.overlay.class_colour`, the same in every
edgeseg figure); ground truth is drawn solid and the prediction dashed, so the two stay apart
without telling red from green.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgeseg.errors import DataError
from edgeseg.report.output import new_figure, save_png
from edgeseg.runtime.overlay import SOFT_TISSUE_WINDOW, class_colour

DEFAULT_WINDOW = SOFT_TISSUE_WINDOW
TRUTH_STYLE, PRED_STYLE = "solid", "dashed"
# Room the legend and the title need even when the grid is a single narrow panel.
MIN_FIGURE_INCHES = 6.0


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
            colour = class_colour(cls)
            _draw_contour(ax, None if item.truth is None else item.truth == cls, colour, TRUTH_STYLE)
            _draw_contour(ax, None if item.pred is None else item.pred == cls, colour, PRED_STYLE)
    else:
        _draw_contour(ax, item.truth, class_colour(1), TRUTH_STYLE)
        _draw_contour(ax, item.pred, class_colour(1), PRED_STYLE)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    if item.title:
        ax.set_title(item.title, fontsize=9)


def _add_legend(figure, items: Sequence[OverlayItem]) -> None:
    from matplotlib.lines import Line2D

    handles = []
    classes = next((item.class_names for item in items if item.class_names), ())
    # With classes, colour names the class and the line style truth or prediction; without,
    # the one colour is class 1's.
    style_colour = "black" if classes else class_colour(1)
    handles += [Line2D([], [], color=class_colour(k + 1), linewidth=2, label=name) for k, name in enumerate(classes)]
    if any(item.truth is not None for item in items):
        handles.append(Line2D([], [], color=style_colour, linewidth=1.5, linestyle=TRUTH_STYLE, label="ground truth"))
    if any(item.pred is not None for item in items):
        handles.append(Line2D([], [], color=style_colour, linewidth=1.5, linestyle=PRED_STYLE, label="prediction"))
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False,
                      fontsize=9)


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

    ``truth`` is outlined solid, ``pred`` dashed, both in class 1's colour; both are optional
    (H, W) masks matching the slice. The file is written atomically.
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
    figure = overlay_grid_figure(items, window=window, columns=columns, title=title, panel_inches=panel_inches)
    save_png(path, figure, dpi=dpi)


def overlay_grid_figure(
    items: Sequence[OverlayItem | Mapping],
    window: Sequence[float] = DEFAULT_WINDOW,
    columns: int = 4,
    title: str = "",
    panel_inches: float = 4.0,
):
    """The matplotlib Figure :func:`save_overlay_grid` writes."""
    checked = [_checked_item(item) for item in items]
    if not checked:
        raise DataError("save_overlay_grid needs at least one item")
    if isinstance(columns, bool) or not isinstance(columns, (int, np.integer)) or columns < 1:
        raise DataError(f"columns must be a positive integer, got {columns!r}")
    _check_window(window)
    ncols = min(int(columns), len(checked))
    nrows = math.ceil(len(checked) / ncols)
    aspect = max(item.ct_slice_hu.shape[0] / item.ct_slice_hu.shape[1] for item in checked)
    width = max(panel_inches * ncols, MIN_FIGURE_INCHES)
    figure = new_figure((width, panel_inches * aspect * nrows + 0.9))
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, item in zip(axes, checked):
        _draw_panel(ax, item, window)
    for ax in axes[len(checked):]:
        ax.set_axis_off()
    _add_legend(figure, checked)
    if title:
        # about 11 characters of 11-point text to the inch
        figure.suptitle(textwrap.fill(title, int(width * 11)), fontsize=11)
    return figure
