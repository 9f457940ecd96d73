"""pytest-benchmark: fit=pad against fit=stretch pre- and post-processing on a non-square slice.

Pad resizes into a smaller box (the slice's aspect kept) and fills the margin; post-processing
crops the box out of the logits first. ``pytest benchmarks/bench_fit.py --benchmark-only`` groups
each pair; ``python benchmarks/bench_fit.py`` prints both and the pad/stretch ratio in one run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeseg.bench import kernels as work  # noqa: E402
from edgeseg.kernels import postprocess, preprocess  # noqa: E402
from edgeseg.spec import PreprocessSpec  # noqa: E402

SLICE = (430, 630)  # a chest crop: wider than tall
SIZE = (256, 256)


def fit_spec(fit: str) -> PreprocessSpec:
    return PreprocessSpec(window=work.WINDOW, size=SIZE, fit=fit)


@pytest.fixture(scope="module")
def chest():
    return work.hu_slices(1, *SLICE)


@pytest.mark.parametrize("fit", ["stretch", "pad"])
def test_preprocess_fit(benchmark, chest, fit):
    benchmark.group = f"fit pre {SLICE[0]}x{SLICE[1]}->{SIZE[0]}"
    out = benchmark(preprocess, chest, fit_spec(fit), num_threads=1)
    assert out.shape == (1, 1, *SIZE)


@pytest.mark.parametrize("fit", ["stretch", "pad"])
def test_postprocess_fit(benchmark, fit):
    logits = work.blob_logits()
    benchmark.group = f"fit post 2x{SIZE[0]}->{SLICE[0]}x{SLICE[1]}"
    out = benchmark(postprocess, logits, SLICE, fit=fit, num_threads=1)
    assert out.shape == (1, *SLICE) and out.dtype == np.uint8


def main() -> int:
    chest, logits = work.hu_slices(1, *SLICE), work.blob_logits()
    rows = {}
    for name, call in [("pre", lambda fit: preprocess(chest, fit_spec(fit), num_threads=1)),
                       ("post", lambda fit: postprocess(logits, SLICE, fit=fit, num_threads=1))]:
        rows[name] = {fit: work.measure(lambda: call(fit), 0.5) for fit in ("stretch", "pad")}
    print(f"{'1 slice ' + str(SLICE[0]) + 'x' + str(SLICE[1]) + ' <-> ' + str(SIZE[0]):26s}"
          f"{'stretch ms':>12s}{'pad ms':>10s}{'pad/stretch':>13s}")
    for name, r in rows.items():
        print(f"{name:26s}{r['stretch'] * 1e3:12.3f}{r['pad'] * 1e3:10.3f}{r['pad'] / r['stretch']:13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
