"""Edits tests make to a copy of the test bundle's manifest."""

from __future__ import annotations

import json
from pathlib import Path


def filter_liver_by_ml(bundle: Path, min_ml: float) -> Path:
    """Give ``bundle`` (a copy) a 3-D filter removing liver components under ``min_ml`` mL, which
    makes every volume path need the voxel spacing; returns ``bundle``."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["postprocess"] = {"resize": "logits", "classes": {"1": {"min_ml": min_ml}}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle
