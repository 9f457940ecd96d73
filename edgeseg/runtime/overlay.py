"""Overlay PNGs without matplotlib: the CT slice in a display window, label outlines in colour.

Kept to numpy and Pillow so the runtime draws overlays without the plotting stack. The class
colours and display windows here are the ones every edgeseg figure uses (evaluation overlays,
per-class training curves), so a class has the same colour in all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Class c is drawn in CLASS_COLOURS[(c - 1) % 8]: the Okabe-Ito palette, whose colours stay
# apart for the common colour-vision deficiencies (red-green above all), bright ones first so
# the first classes stand out on a grey CT.
CLASS_COLOURS = ("#56b4e9", "#e69f00", "#f0e442", "#cc79a7", "#009e73", "#d55e00", "#0072b2", "#ffffff")

SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # level 40, width 400: liver and other abdominal organs
LUNG_WINDOW = (-1350.0, 150.0)  # level -600, width 1500: lung parenchyma, ground-glass, consolidation
# A model window reaching this low looks at lung (air-filled tissue lies below -500 HU).
LUNG_WINDOW_BELOW_HU = -500.0
DISPLAY_WINDOW = SOFT_TISSUE_WINDOW


def class_colour(cls: int) -> str:
    """The ``#rrggbb`` colour of class ``cls`` (1, 2, ...) in every edgeseg figure."""
    return CLASS_COLOURS[(int(cls) - 1) % len(CLASS_COLOURS)]


def class_rgb(cls: int) -> tuple[int, int, int]:
    """:func:`class_colour` as an (r, g, b) tuple of 0..255."""
    colour = class_colour(cls)
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def display_window(model_window: Sequence[float] | None) -> tuple[float, float]:
    """The window (low, high HU) a reader views the task's slices in: the lung window when the
    model's own window reaches into air-filled lung (below -500 HU), else the soft-tissue one."""
    if model_window is not None and float(model_window[0]) <= LUNG_WINDOW_BELOW_HU:
        return LUNG_WINDOW
    return SOFT_TISSUE_WINDOW


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_rgb(hu: np.ndarray, labels: np.ndarray, window: tuple[float, float] = DISPLAY_WINDOW) -> np.ndarray:
    """(H, W, 3) uint8: ``hu`` windowed to grey with each class's outline drawn in its colour.

    The slice keeps the Volume's layout (LPS: the patient's right on the image's left, anterior
    at the top), as a radiologist views an axial slice.
    """
    low, high = window
    grey = np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    for cls in np.unique(labels):
        if cls == 0:
            continue
        rgb[outline(labels == cls)] = class_rgb(int(cls))
    return rgb
