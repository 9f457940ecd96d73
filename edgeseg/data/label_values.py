"""Label values stored as floating point (NIfTI and NRRD label maps, float TIFF masks of slice
folders): which name a label, and which are refused.

Resampling and format conversion in float32 leave 0.9999999 for 1 and 2.0000002 for 2, which name
their label without doubt; a value half-way (0.5 from linear interpolation of a label map) names
none, and rounding it would invent a boundary. NaN and infinity name none either (the readers
refuse them before, and a check here must not let them through where they did not).
"""

from __future__ import annotations

import numpy as np

# How far a floating-point label value may lie from a whole number and still be read as that label.
LABEL_TOLERANCE = 1e-3


def off_whole(values: np.ndarray) -> np.ndarray:
    """Where a float value is not within :data:`LABEL_TOLERANCE` of a whole number (NaN and
    infinity included), as a boolean array of ``values``' shape."""
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, which is what marks it
        return ~(np.abs(values - np.rint(values)) <= LABEL_TOLERANCE)


def rounded_labels(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to whole numbers where they are float (each within the tolerance, as
    :func:`off_whole` has checked); integer values as they are."""
    return np.rint(values) if values.dtype.kind == "f" else values
