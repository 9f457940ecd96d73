"""Re-export 8-bit CT slices as another hospital would, to test robustness to the export window.

The MSD slices store HU clipped to [0, 255]. A site exporting with a [LO, HI] HU window writes
round((HU - LO) / (HI - LO) * 255) instead; a model that reads those files as [0, 255] sees
shifted, compressed intensities. This writes the slices of one split that way (PNG, masks
copied), so `edgeseg evaluate CHECKPOINT --data OUT --split all` measures the effect:

    python benchmarks/rewindow_slices.py ../shared/data/msd_liver_slices runs/msd/split.json \
        runs/msd-w160 --split val --window=-160,240
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="slice folder with images/ and masks/ (pixel = HU clipped to [0, 255])")
    parser.add_argument("split_json", type=Path, help="a run's split.json")
    parser.add_argument("out", type=Path)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    parser.add_argument("--window", default="-160,240", help="the other site's HU window LO,HI")
    args = parser.parse_args(argv)
    try:
        lo, hi = (float(v) for v in args.window.split(","))
    except ValueError:
        parser.error(f"--window must be LO,HI in HU, got {args.window!r}")
    if not lo < hi:
        parser.error(f"--window low end must be below the high end, got {args.window!r}")
    if not (args.source / "images").is_dir() or not (args.source / "masks").is_dir():
        parser.error(f"{args.source} has no images/ and masks/ folders")
    try:
        cases = set(json.loads(args.split_json.read_text())[args.split])
    except (OSError, ValueError, KeyError) as exc:
        parser.error(f"cannot read the {args.split} cases from {args.split_json}: {exc}")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new folder")
    # Written into a sibling temporary folder and renamed: no half-written output.
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}.") as tmp:
        work = Path(tmp) / "out"
        (work / "images").mkdir(parents=True)
        (work / "masks").mkdir()
        count = 0
        for image in sorted((args.source / "images").iterdir()):
            if len(image.stem.split("_")) < 2 or image.stem.split("_")[1] not in cases:
                continue
            hu = np.asarray(Image.open(image).convert("L"), dtype=np.float64)
            pixels = np.clip(np.rint((hu - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(work / "images" / f"{image.stem}.png")
            Image.open(args.source / "masks" / image.name).save(work / "masks" / f"{image.stem}.png")
            count += 1
        if count == 0:
            parser.error(f"no slice of the {args.split} split found in {args.source}")
        work.rename(args.out)
    print(f"{count} slices of the {args.split} split written to {args.out} as a [{lo:g}, {hi:g}] HU export")
    return 0


if __name__ == "__main__":
    sys.exit(main())
