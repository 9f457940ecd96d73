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
# 2026-11-25. A mask moved by one pixel along either axis scores at most 0.912 against them, and
# an empty or misplaced one far less: a resize, orientation or post-processing fault falls below.
INT8_DICE_WITHOUT_VNNI = 0.95


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
    x86 CPU without VNNI, with a Dice of at least :data:`INT8_DICE_WITHOUT_VNNI`."""
    from edgeseg.runtime.selection import cpu_lacks_vnni

    expected = old_labels(backend)
    assert labels.shape == expected.shape and labels.dtype == expected.dtype
    if backend.endswith(":int8") and cpu_lacks_vnni():
        assert dice(labels, expected) >= INT8_DICE_WITHOUT_VNNI, (
            f"{backend}: Dice {dice(labels, expected):.4f} against the labels of 2026-11-25 "
            f"({np.count_nonzero(labels != expected)} pixels differ) on a CPU without VNNI")
    else:
        np.testing.assert_array_equal(labels, expected)
