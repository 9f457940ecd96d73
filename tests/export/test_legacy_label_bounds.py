"""The bounds INT8 labels on an x86 CPU without VNNI are held to against the labels of 2026-11-25
(tests/legacy_labels.py) refuse what a real fault gives. The faults are made here from the
recorded labels themselves (numpy); the labels INT8 runners give on such a CPU pass them in
tests/export/test_legacy_bundle.py and tests/capi/test_legacy_bundle.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.legacy_labels import assert_old_labels, old_labels

BACKENDS = ["onnxruntime:int8", "openvino:int8"]


def _without_vnni() -> bool:
    from edgeseg.runtime.selection import cpu_lacks_vnni

    return cpu_lacks_vnni()


pytestmark = pytest.mark.skipif(not _without_vnni(), reason="the bounds hold on an x86 CPU without VNNI only: "
                                "with VNNI the INT8 labels must be the recorded ones exactly")


def _end_slice_lost(labels: np.ndarray) -> np.ndarray:
    """``labels`` with their last slice of foreground emptied."""
    lost = labels.copy()
    lost[max(z for z in range(len(labels)) if np.any(labels[z] > 0))] = 0
    return lost


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fault", [_end_slice_lost, lambda labels: np.roll(labels, 1, axis=2)],
                         ids=["end-slice-lost", "moved-one-pixel"])
def test_labels_with_a_fault_are_refused(backend, fault):
    """A whole end slice lost (22 or 23 pixels) scored Dice 0.971 over the volume and passed the
    bound of 0.95 alone; it now fails on the slice's Dice and the pixels that differ."""
    with pytest.raises(AssertionError, match="on a CPU without VNNI"):
        assert_old_labels(fault(old_labels(backend)), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_recorded_labels_pass(backend):
    assert_old_labels(old_labels(backend), backend)
