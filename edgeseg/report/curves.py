"""Training curves: losses and validation Dice per epoch, with the best epoch marked."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from edgeseg.errors import DataError
from edgeseg.report.output import new_figure, save_png
from edgeseg.runtime.overlay import CLASS_COLOURS

HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "val_dice", "lr")


def history_series(history: Sequence[Mapping], key: str) -> np.ndarray:
    """The values of ``key`` over the epochs of ``history`` as floats; missing or null -> nan."""
    # A missing or null value (an epoch without validation) becomes nan: matplotlib leaves a
    # gap there instead of drawing a line through zero.
    values = []
    for entry in history:
        value = entry.get(key)
        try:
            values.append(math.nan if value is None else float(value))
        except (TypeError, ValueError):
            raise DataError(
                f"history entry for epoch {entry.get('epoch')!r}: {key} is not a number: {value!r}"
            ) from None
    return np.array(values, dtype=np.float64)


def best_epoch_index(val_dice: np.ndarray) -> int | None:
    """Index of the highest finite validation Dice (the first, on ties), or None if there is none."""
    finite = np.isfinite(val_dice)
    if not finite.any():
        return None
    return int(np.argmax(np.where(finite, val_dice, -np.inf)))


CLASS_PREFIX = "val_dice_"
# Per-class curves (several classes only) in each class's colour of the overlays.
CLASS_CURVE_COLOURS = CLASS_COLOURS


def _class_series(history: Sequence[Mapping]) -> list[tuple[str, np.ndarray]]:
    """``(class name, per-epoch validation Dice)`` for each ``val_dice_<class>`` key, when the
    history has several classes (for one class that curve is the mean curve itself)."""
    names = [key[len(CLASS_PREFIX):] for key in history[0] if key.startswith(CLASS_PREFIX)]
    return [(name, history_series(history, CLASS_PREFIX + name)) for name in names] if len(names) > 1 else []


def _legend_above(ax, handles, labels) -> None:
    """The legend of ``ax`` above its plot area, where no curve runs: inside it, ``loc="best"``
    sees only the curves of its own axis, and placed the Dice panel's legend over the
    learning-rate line of the twin axis (constrained layout makes room above)."""
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, fontsize=9, frameon=False)


def plot_training_curves(path: str | os.PathLike, history: Sequence[Mapping], title: str = "") -> None:
    """Write :func:`training_curves_figure` as a PNG at ``path`` (atomically)."""
    save_png(path, training_curves_figure(history, title))


def training_curves_figure(history: Sequence[Mapping], title: str = ""):
    """A figure with two panels: train / val loss, and val Dice with the best epoch marked
    (and, when the history has several classes' ``val_dice_<class>``, a dashed curve per class).

    ``history`` has one dict per epoch with keys epoch, train_loss, val_loss, val_dice and lr
    (the trainer's ``metrics.json`` history); the learning rate is drawn on a log-scale right
    axis of the Dice panel. Each panel's legend sits above it, clear of every curve.
    """
    if not history:
        raise DataError("training history is empty: nothing to plot")
    for entry in history:
        missing = [key for key in HISTORY_KEYS if key not in entry]
        if missing:
            raise DataError(f"history entry {dict(entry)!r} lacks keys {missing}; expected {list(HISTORY_KEYS)}")
    epochs = history_series(history, "epoch")
    val_dice = history_series(history, "val_dice")
    learning_rate = history_series(history, "lr")

    figure = new_figure((11, 4.2))
    from matplotlib.ticker import MaxNLocator
    loss_ax, dice_ax = figure.subplots(1, 2)
    loss_ax.plot(epochs, history_series(history, "train_loss"), marker=".", label="train loss")
    loss_ax.plot(epochs, history_series(history, "val_loss"), marker=".", label="val loss")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    _legend_above(loss_ax, *loss_ax.get_legend_handles_labels())

    dice_ax.plot(epochs, val_dice, marker=".", color="tab:green", label="val Dice")
    for (name, series), colour in zip(_class_series(history), CLASS_CURVE_COLOURS):
        dice_ax.plot(epochs, series, linestyle="--", linewidth=1.2, color=colour, label=f"val Dice {name}")
    best = best_epoch_index(val_dice)
    if best is not None:
        dice_ax.axvline(epochs[best], color="tab:red", linestyle=":", linewidth=1)
        dice_ax.plot(
            [epochs[best]], [val_dice[best]], marker="*", markersize=14, color="tab:red", linestyle="none",
            label=f"best: epoch {epochs[best]:g}, Dice {val_dice[best]:.4f}",
        )
    dice_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    dice_ax.set_xlabel("epoch")
    dice_ax.set_ylabel("validation Dice")
    dice_ax.grid(alpha=0.3)
    if np.all(np.isfinite(learning_rate) & (learning_rate > 0)):
        lr_ax = dice_ax.twinx()
        lr_ax.plot(epochs, learning_rate, color="grey", linestyle="--", linewidth=1, label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="grey")
        # One legend for both axes, or the learning-rate line would go unexplained.
        handles, labels = dice_ax.get_legend_handles_labels()
        lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
        _legend_above(dice_ax, handles + lr_handles, labels + lr_labels)
    else:
        _legend_above(dice_ax, *dice_ax.get_legend_handles_labels())
    if title:
        figure.suptitle(title)
    return figure
