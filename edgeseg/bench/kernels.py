"""Time the C kernels against the numpy oracle, OpenCV and torch; print the ratios in one run.

``python -m edgeseg.bench.kernels [--json PATH] [--repeat-seconds S]``. OpenCV and torch are
optional (their columns read "-" when missing) and are imported only inside ``main``. Single-slice
rows run every library on one thread, so the ratios compare implementations, not core counts;
the batch rows time the C kernel on 1 and on 2 threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np

from edgeseg.kernels import postprocess, preprocess, reference
from edgeseg.spec import PreprocessSpec

WINDOW = (-160.0, 240.0)


def hu_slices(count: int, rows: int = 512, cols: int = 512, seed: int = 0) -> np.ndarray:
    """int16 CT-like slices: a body ellipse of soft tissue with noise, air outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    body = ((yy - rows / 2) / (0.42 * rows)) ** 2 + ((xx - cols / 2) / (0.47 * cols)) ** 2 < 1
    base = np.where(body, 40, -1000).astype(np.float32)
    return (base + rng.normal(0, 30, size=(count, rows, cols))).astype(np.int16)


def blob_logits(count: int = 1, classes: int = 2, size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth float32 logits with a few blobs per foreground class (as a trained model gives)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.zeros((count, classes, size, size), np.float32)
    for n in range(count):
        for k in range(1, classes):
            field = np.full((size, size), -4.0)
            for _ in range(3):
                cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
                field = np.maximum(field, 4.0 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
            out[n, k] = field + rng.normal(0, 0.3, size=field.shape)
    return out


def measure(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds per call over repeats filling about ``seconds`` (at least 3 calls)."""
    fn()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 2000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def opencv_preprocess(cv2, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The fastest OpenCV route to the same numbers: clip int16, resize float32, scale."""
    low, high = spec.window
    a, b = spec.scale_offset
    inter = cv2.INTER_AREA if spec.interpolation == "area" else cv2.INTER_LINEAR
    out = np.empty((len(images), 1, *spec.size), np.float32)
    for i, img in enumerate(images):
        clipped = np.clip(img, low, high).astype(np.float32)
        out[i, 0] = cv2.resize(clipped, spec.size[::-1], interpolation=inter) * a + b
    return out


def torch_preprocess(torch, images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    low, high = spec.window
    a, b = spec.scale_offset
    t = torch.from_numpy(images).to(torch.float32).clamp_(low, high)[:, None]
    mode = {"bilinear": "bilinear", "area": "area"}[spec.interpolation]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return (torch.nn.functional.interpolate(t, size=spec.size, mode=mode, **kwargs) * a + b).numpy()


def opencv_postprocess(cv2, logits: np.ndarray, size: tuple[int, int], keep_largest: bool) -> np.ndarray:
    """cv2.resize per class, a running-max argmax, cv2.connectedComponentsWithStats for components."""
    out = np.empty((logits.shape[0], *size), np.uint8)
    for n, classes in enumerate(logits):
        best = cv2.resize(classes[0], size[::-1], interpolation=cv2.INTER_LINEAR)
        labels = np.zeros(size, np.uint8)
        for k in range(1, len(classes)):
            r = cv2.resize(classes[k], size[::-1], interpolation=cv2.INTER_LINEAR)
            labels[r > best] = k
            np.maximum(best, r, out=best)
        if keep_largest:
            for k in range(1, len(classes)):
                count, comp, stats, _ = cv2.connectedComponentsWithStats((labels == k).view(np.uint8), connectivity=8)
                if count > 2:
                    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                    labels[(comp != keep) & (labels == k)] = 0
        out[n] = labels
    return out


def torch_postprocess(torch, logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.nn.functional.interpolate(torch.from_numpy(logits), size=size, mode="bilinear", align_corners=False)
    return t.argmax(dim=1).to(torch.uint8).numpy()


def _optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


def run(seconds: float = 0.3) -> dict:
    """Time every workload; returns {row: {column: seconds}} plus derived ratios."""
    cv2, torch = _optional("cv2"), _optional("torch")
    if cv2 is not None:
        cv2.setNumThreads(1)
    if torch is not None:
        torch.set_num_threads(1)
    one = hu_slices(1)
    batch = hu_slices(64, seed=1)
    rows: dict[str, dict[str, float]] = {}
    for label, images, size, interp in [
        ("pre 512->256 bilinear", one, (256, 256), "bilinear"),
        ("pre 512->128 bilinear", one, (128, 128), "bilinear"),
        ("pre 512->128 area", one, (128, 128), "area"),
        ("pre 64x512->256 bilinear", batch, (256, 256), "bilinear"),
    ]:
        spec = PreprocessSpec(window=WINDOW, size=size, interpolation=interp)
        slow = seconds if len(images) == 1 else seconds / 3
        r = {"C": measure(lambda: preprocess(images, spec, num_threads=1), seconds)}
        if len(images) > 1:
            r["C 2 threads"] = measure(lambda: preprocess(images, spec, num_threads=2), seconds)
        r["numpy"] = measure(lambda: reference.preprocess(images, spec), slow)
        if cv2 is not None:
            r["OpenCV"] = measure(lambda: opencv_preprocess(cv2, images, spec), seconds)
        if torch is not None:
            r["torch"] = measure(lambda: torch_preprocess(torch, images, spec), seconds)
        rows[label] = r
    logits = blob_logits()
    for label, keep in [("post 2x256->512", False), ("post 2x256->512 +largest", True)]:
        r = {"C": measure(lambda: postprocess(logits, (512, 512), keep_largest=keep, num_threads=1), seconds)}
        r["numpy"] = measure(lambda: reference.postprocess(logits, (512, 512), keep_largest=keep), seconds)
        if cv2 is not None:
            r["OpenCV"] = measure(lambda: opencv_postprocess(cv2, logits, (512, 512), keep), seconds)
        if torch is not None and not keep:
            r["torch"] = measure(lambda: torch_postprocess(torch, logits, (512, 512)), seconds)
        rows[label] = r
    return rows


def format_table(rows: dict) -> str:
    cols = ["C", "C 2 threads", "numpy", "OpenCV", "torch"]
    head = f"{'workload':28s}" + "".join(f"{c + ' ms':>15s}" for c in cols)
    head += f"{'C/OpenCV':>10s}{'numpy/C':>9s}{'C/torch':>9s}{'2-thr x':>9s}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        cells = "".join(f"{r[c] * 1e3:15.3f}" if c in r else f"{'-':>15s}" for c in cols)
        ratio = lambda a, b, fmt: format(r[a] / r[b], fmt) if a in r and b in r else "-"  # noqa: E731
        cells += f"{ratio('C', 'OpenCV', '.2f'):>10s}{ratio('numpy', 'C', '.0f'):>9s}"
        cells += f"{ratio('C', 'torch', '.2f'):>9s}{ratio('C', 'C 2 threads', '.2f'):>9s}"
        lines.append(f"{name:28s}{cells}")
    lines.append("C/OpenCV, C/torch < 1: C is faster; numpy/C: times faster than the oracle; "
                 "2-thr x: 64-slice speed-up on 2 threads over 1. Single-slice rows: 1 thread each.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeseg.bench.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="also write the timings (seconds) as JSON")
    parser.add_argument("--repeat-seconds", type=float, default=0.3, help="time budget per measurement")
    args = parser.parse_args(argv)
    rows = run(args.repeat_seconds)
    sys.stdout.write(format_table(rows) + "\n")
    if args.json:
        from edgeseg.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
