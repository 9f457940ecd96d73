"""The labels edgeseg gave on the bundle of 2026-11-25 (tests/data/legacy), and how labels given
today are held to them.

They were recorded on an x86 CPU with VNNI. The bundle's INT8 graph has signed activations (the
``tensorrt`` scheme, from before the schemes were recorded), and on an x86 CPU without VNNI the
CPU INT8 kernels add its u8 x s8 products in pairs into 16 bits with saturation (see
``edgeseg.export.int8``): the same graph computes other integers there, so the INT8 labels
recorded then are not its labels on such a CPU, and edgeseg says so (``auto`` never picks a CPU
runner on that graph there, and naming one warns). There, INT8 labels must stay within
:data:`INT8_DICE_WITHOUT_VNNI` of the recorded ones; everywhere else, and for FP32 everywhere,
they must be the recorded labels exactly. Whether the CPU lacks VNNI is the runtime's own test
(``edgeseg.runtime.selection.cpu_lacks_vnni``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LEGACY = Path(__file__).parent / "data" / "legacy"
BUNDLE = LEGACY / "bundle-2026-11-25"
HU = LEGACY / "phantom-hu-6x40x28.npy"

# Measured on an AMD EPYC without VNNI (AVX2, FMA): Dice 0.974 (onnxruntime:int8, 20 pixels
# differ) and 0.971 (openvino:int8 and libedgeseg's OpenVINO, 23 pixels) against the labels of
# 2026-11-25, each slice with foreground at Dice 0.947 or more (the smallest, 22 pixels, at 0.979
# and 1.0). A mask moved by one pixel along either axis scores at most 0.912 against them, and an
# empty or misplaced one far less: a resize, orientation or post-processing fault falls below. A
# whole end slice lost (22 pixels) still scores 0.971 over the volume: the number of pixels that
# differ and the Dice of each slice with foreground are bounded too.
INT8_DICE_WITHOUT_VNNI = 0.95
INT8_PIXELS_WITHOUT_VNNI = 30  # pixels that may differ in all
INT8_SLICE_DICE_WITHOUT_VNNI = 0.9  # each slice with foreground in the recorded labels


def old_labels(backend: str) -> np.ndarray:
    """The labels of ``edgeseg predict BUNDLE HU --backend BACKEND`` on 2026-11-25."""
    labels = np.load(LEGACY / f"labels-2026-11-25-{backend.replace(':', '-')}.npy")
    assert labels.shape == (6, 40, 28) and 300 < np.count_nonzero(labels) < 500  # a liver, not an empty mask
    return labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the foregrounds of two label maps (numpy, not edgeseg's metrics)."""
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def assert_old_labels(labels: np.ndarray, backend: str) -> None:
    """``labels`` are those ``backend`` gave on 2026-11-25: exactly, or for an INT8 backend on an
    x86 CPU without VNNI, within :func:`near_old_labels`'s bounds."""
    from edgeseg.runtime.selection import cpu_lacks_vnni

    expected = old_labels(backend)
    assert labels.shape == expected.shape and labels.dtype == expected.dtype
    if backend.endswith(":int8") and cpu_lacks_vnni():
        problem = near_old_labels(labels, expected)
        assert problem is None, f"{backend}: {problem} against the labels of 2026-11-25 on a CPU without VNNI"
    else:
        np.testing.assert_array_equal(labels, expected)


def near_old_labels(labels: np.ndarray, expected: np.ndarray) -> str | None:
    """None where ``labels`` are within the bounds of INT8 labels on a CPU without VNNI of
    ``expected``: Dice :data:`INT8_DICE_WITHOUT_VNNI` or more, at most
    :data:`INT8_PIXELS_WITHOUT_VNNI` pixels differing, and each slice with foreground in
    ``expected`` at Dice :data:`INT8_SLICE_DICE_WITHOUT_VNNI` or more; else what is out of them."""
    differ = int(np.count_nonzero(labels != expected))
    slices = {z: dice(labels[z], expected[z]) for z in range(expected.shape[0]) if np.any(expected[z] > 0)}
    worst = min(slices, key=slices.get)
    if (dice(labels, expected) < INT8_DICE_WITHOUT_VNNI or differ > INT8_PIXELS_WITHOUT_VNNI
            or slices[worst] < INT8_SLICE_DICE_WITHOUT_VNNI):
        return (f"Dice {dice(labels, expected):.4f}, {differ} pixels differ, slice {worst} at Dice "
                f"{slices[worst]:.4f}")
    return None
