"""The 3-D component filter (C, run-length union-find, 6-connected) against scipy.ndimage.label.

Two workloads of one CT volume's prediction: ``organ`` (a liver-sized blob over most slices with
a few hundred stray specks, what a network gives) and ``noise`` (a dense random label volume:
the most runs and unions per voxel). The scipy side is what the filter replaces: label the
class, count the sizes, clear all but the largest (``edgeseg.kernels.reference``). Both sides
are checked equal before timing.

    pytest benchmarks/bench_components.py --benchmark-only --benchmark-group-by=param:workload
    python benchmarks/bench_components.py      # both workloads, interleaved, with the ratio
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from edgeseg.kernels import ComponentRule, filter_components

RULES = {1: ComponentRule(keep_largest=True)}
SHAPE = (96, 512, 512)


def organ_volume(shape=SHAPE, seed=0) -> np.ndarray:
    """An ellipsoid over most slices plus 300 specks of 1-30 voxels across the volume."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    lab = (((z - shape[0] / 2) / (0.4 * shape[0])) ** 2 + ((y - 220) / 120) ** 2 + ((x - 180) / 140) ** 2 < 1)
    lab = lab.astype(np.uint8)
    for _ in range(300):
        cz, cy, cx = (int(rng.integers(0, s - 3)) for s in shape)
        lab[cz:cz + int(rng.integers(1, 3)), cy:cy + int(rng.integers(1, 4)), cx:cx + int(rng.integers(1, 6))] = 1
    return lab


def noise_volume(shape=(32, 512, 512), seed=1) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < 0.4).astype(np.uint8)


WORKLOADS = {"organ 96x512x512": organ_volume, "noise 32x512x512": noise_volume}


@pytest.fixture(scope="module")
def volumes():
    return {name: make() for name, make in WORKLOADS.items()}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("impl", ["C 1 thread", "C 2 threads", "scipy.ndimage"])
def test_largest_3d_component(benchmark, volumes, workload, impl):
    lab = volumes[workload]
    benchmark.group = f"largest 3-D component {workload}"
    if impl == "scipy.ndimage":
        out = benchmark.pedantic(filter_components, (lab, RULES), dict(volume=True, reference=True), rounds=3)
    else:
        threads = 1 if impl == "C 1 thread" else 2
        out = benchmark(filter_components, lab, RULES, volume=True, num_threads=threads)
    np.testing.assert_array_equal(out, filter_components(lab, RULES, volume=True, num_threads=1))


def interleaved_ratio(lab: np.ndarray, runs: int = 5) -> dict[str, float]:
    """Median seconds of C (1 thread), the scipy filter and scipy.ndimage.label alone (the
    labelling without the sizes and the clearing) called in turn, and their ratios to C."""
    from scipy import ndimage

    six = ndimage.generate_binary_structure(3, 1)
    calls = {"C": lambda: filter_components(lab, RULES, volume=True, num_threads=1),
             "scipy": lambda: filter_components(lab, RULES, volume=True, reference=True),
             "label": lambda: ndimage.label(lab == 1, structure=six)}
    np.testing.assert_array_equal(calls["C"](), calls["scipy"]())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**med, "ratio": med["scipy"] / med["C"], "label_ratio": med["label"] / med["C"]}


if __name__ == "__main__":
    for name, make in WORKLOADS.items():
        r = interleaved_ratio(make())
        print(f"{name}: C 1 thread {r['C'] * 1e3:.1f} ms, scipy filter {r['scipy'] * 1e3:.1f} ms "
              f"({r['ratio']:.1f}x), scipy.ndimage.label alone {r['label'] * 1e3:.1f} ms ({r['label_ratio']:.1f}x)")
