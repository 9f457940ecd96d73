"""A bundle of an untrained U-Net, written by edgeseg.export, for latency and robustness work.

Latency does not depend on the weights, so benchmarks of a model shape need no training:

    python benchmarks/random_bundle.py OUT --base 32 --depth 4 --size 256 [--classes 2] [--int8]

The checkpoint gets random (seeded) weights and goes through the normal export: the same
artifacts, manifest and hashes as a trained model's bundle. The gate still runs, against
phantom slices; for ``--int8`` its Dice-drop limit is lifted (random weights give noise masks,
whose INT8 agreement means nothing), and the report says so in its thresholds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def random_bundle(out: str | Path, base: int = 16, depth: int = 2, size: int = 64, classes: int = 2,
                  int8: bool = False, max_batch: int = 8, seed: int = 0) -> Path:
    """Export a seeded random-weight U-Net of this shape as a bundle at ``out``; returns ``out``."""
    import torch

    from edgeseg.export.pipeline import export_bundle
    from edgeseg.export.profiles import ExportSettings
    from edgeseg.models import ModelConfig, build_model
    from edgeseg.models.checkpoint import save_checkpoint
    from edgeseg.spec import PreprocessSpec

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ModelConfig(num_classes=classes, base=base, depth=depth)
    checkpoint = out.parent / f".{out.name}.random.pt"
    names = ["background", *(f"class{k}" for k in range(1, classes))]
    save_checkpoint(checkpoint, build_model(config).eval(), config,
                    PreprocessSpec(window=(-200.0, 300.0), size=(size, size)), names, epoch=0)
    phantom = f"phantom:cases=2,size={size},slices=8,seed={seed}"
    settings = ExportSettings(formats=("onnx",), int8=int8, calib_slices=16, max_batch=max_batch, verify_slices=8,
                              max_dice_drop={"fp32": 0.0, "fp16": 0.002, "int8": 1.0})
    try:
        export_bundle(checkpoint, out, settings, calib=phantom if int8 else None, verify_data=phantom,
                      progress=False, echo=lambda text: None)
    finally:
        checkpoint.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--int8", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from edgeseg.errors import EdgesegError

    try:
        random_bundle(args.out, args.base, args.depth, args.size, args.classes, args.int8, args.max_batch)
    except EdgesegError as exc:
        parser.exit(2, f"random_bundle: error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
