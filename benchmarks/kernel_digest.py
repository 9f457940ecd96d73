"""One SHA-256 over the outputs of many C kernel calls, to compare two builds bit for bit.

    python benchmarks/kernel_digest.py
    PYTHONPATH=OTHER_TREE python benchmarks/kernel_digest.py

Two builds that print the same digest gave byte-identical outputs on every call: the SIMD
build against ``CFLAGS=-DES_NO_SIMD``, or an x86 build against one on an aarch64 machine. The
calls: pre-processing of three 300 x 517 slices (int16, float32, uint8) at three sizes, both
interpolations and both output dtypes; post-processing of 2, 3 and 5 classes (float32, float16,
large logits), both resize modes, with and without the largest-component pass, at three sizes;
the 2-D and 3-D component filters. Inputs come from fixed seeds. The first word printed is the
folder the extension was loaded from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgeseg.bench.kernels import blob_logits, hu_slices
from edgeseg.kernels import ComponentRule, _kernels, filter_components, postprocess, preprocess
from edgeseg.spec import PreprocessSpec


def digest() -> str:
    h = hashlib.sha256()
    imgs = hu_slices(3, 300, 517, seed=2)
    sources = [imgs, imgs.astype(np.float32) * 1.3, (imgs // 8 + 128).clip(0, 255).astype(np.uint8)]
    for size in [(256, 256), (128, 96), (700, 333)]:
        for interp in ["bilinear", "area"]:
            for dtype in ["float32", "float16"]:
                spec = PreprocessSpec(window=(-160.0, 240.0), size=size, interpolation=interp, dtype=dtype)
                for src in sources:
                    h.update(preprocess(src, spec, num_threads=2).tobytes())
    for classes in [2, 3, 5]:
        logits = blob_logits(3, classes, 120, seed=classes)
        for variant in [logits, logits.astype(np.float16), logits * 3e4]:
            for size in [(512, 512), (97, 301), (120, 120)]:
                for mode in ["logits", "labels"]:
                    for keep in [False, True]:
                        h.update(postprocess(variant, size, keep_largest=keep, resize=mode, num_threads=2).tobytes())
    labels = (np.random.default_rng(3).random((8, 90, 110)) * 4).astype(np.uint8)
    rules = {1: ComponentRule(True), 2: ComponentRule(min_size=5), 3: ComponentRule(True, 7, 1)}
    for volume in [False, True]:
        h.update(filter_components(labels, rules, volume=volume).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    print(Path(_kernels.__file__).resolve().parents[2], digest())
