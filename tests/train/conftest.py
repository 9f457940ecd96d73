"""Fixtures of the training tests: a synthetic slice folder of label-map masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_lesion_slices(root: Path, count: int = 8, seed: int = 0) -> Path:
    """``count`` slices of different sizes; class 1 a faint patch, class 2 a bright one (grey
    0/1/2 PNG masks, one case per file named NNN). Returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        rows, cols = int(rng.integers(40, 64)), int(rng.integers(40, 64))
        image = np.full((rows, cols), 40, np.float64) + rng.normal(0, 4, (rows, cols))
        label = np.zeros((rows, cols), np.uint8)
        for cls, grey in ((1, 120), (2, 220)):
            r, c = int(rng.integers(2, rows - 16)), int(rng.integers(2, cols - 16))
            label[r:r + 12, c:c + 12] = cls
            image[r:r + 12, c:c + 12] = grey + rng.normal(0, 4, (12, 12))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(label).save(root / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture
def lesion_slices(tmp_path):
    """Writes :func:`write_lesion_slices` under tmp_path; call with (count, seed)."""
    return lambda count=8, seed=0: write_lesion_slices(tmp_path / f"lesions-{count}-{seed}", count, seed)
