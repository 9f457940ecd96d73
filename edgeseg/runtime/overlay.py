"""Overlay PNGs without matplotlib: the CT slice in a display window, label outlines in colour.

Kept to numpy and Pillow so the runtime draws overlays without the plotting stack.
"""

from __future__ import annotations

import numpy as np

# Outline colours per class 1.. (class 0, background, is never drawn).
COLOURS = ((255, 64, 64), (64, 200, 255), (255, 210, 0), (80, 255, 120), (255, 120, 255), (255, 150, 60))
DISPLAY_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (level 40, width 400)


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image edge counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay_rgb(hu: np.ndarray, labels: np.ndarray, window: tuple[float, float] = DISPLAY_WINDOW) -> np.ndarray:
    """(H, W, 3) uint8: ``hu`` windowed to grey with each class's outline drawn in its colour."""
    low, high = window
    grey = np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0)
    rgb = np.repeat((grey * 255.0 + 0.5).astype(np.uint8)[..., None], 3, axis=2)
    for cls in np.unique(labels):
        if cls == 0:
            continue
        rgb[outline(labels == cls)] = COLOURS[(int(cls) - 1) % len(COLOURS)]
    return rgb
