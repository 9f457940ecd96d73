"""Checks of what the runtime is asked to segment, against the bundle's PreprocessSpec.

Everything the model could silently get wrong is refused here with a one-line ``DataError``:
a non-numeric or complex dtype, a wrong rank, a slice too small to resize, larger than
``MAX_SIDE`` (as libedgeseg refuses it) or of the wrong size when the bundle forbids resizing,
NaN or inf, values no CT scanner stores, images that were already normalised (not HU), values
with no air or fat where HU would have them (see ``check_has_air``), and series of
another modality.
"""

from __future__ import annotations

import sys

import numpy as np

from edgeseg.errors import DataError
from edgeseg.spec import MAX_SIZE, PreprocessSpec

# Stored CT values: padding goes down to -3024 HU on some scanners, extended-range metal to
# about 30k; anything beyond int16 / uint16 is not a CT value.
HU_LIMITS = (-32768.0, 65535.0)
KERNEL_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.float32))
MIN_SIDE = 2
# Above this, values with nothing below 0 cannot be HU clipped at 0: soft tissue is under 100 HU and only
# cortical bone, contrast and metal pass 1000, while stored CT values without their RescaleIntercept
# (HU + 1024, or + 1000, + 2048) put all of the body above it.
NO_AIR_HIGH = 1000.0
# Air (lung, outside the body) and fat, in HU: padding (-2000, -3024) is not in it, so stored values
# whose only negatives are padding do not pass for HU. An input holds air or fat when at least
# AIR_PER_MILLE / 1000 of its voxels, and at least one, lie in AIR_HU (libedgeseg's AIR_* alike).
AIR_HU = (-1200.0, -50.0)
AIR_PER_MILLE = 1
# The largest slice side (rows or columns) either runtime takes: libedgeseg's ES_MAX_SIDE
# (csrc/edgeseg.h), the PreprocessSpec's size limit.
MAX_SIDE = MAX_SIZE


def checked_hu(images: np.ndarray, spec: PreprocessSpec, *, ndim: int, resize: bool = True,
               modality: str | None = None, what: str = "input") -> np.ndarray:
    """``images`` as an array the C kernels take ((H, W) or (Z, H, W), see ``ndim``), or DataError.

    float64 and wider integers are converted to float32 once their values are known to fit;
    ``resize=False`` requires the slices to have ``spec.size`` already.
    """
    if modality is not None and modality != "CT":
        raise DataError(f"{what} is a {modality} series; this model segments CT only")
    # np.asarray drops the mask: masked pixels would be read as HU. A masked array exists only once
    # numpy.ma is imported; ``np.ma`` itself would import it (10-40 ms of every cold start).
    masked = sys.modules.get("numpy.ma")
    if masked is not None and isinstance(images, masked.MaskedArray):
        raise DataError(f"{what} is a masked array; give the HU of every pixel (np.ma.filled(images, -1024))")
    arr = np.asarray(images)
    if arr.dtype.kind not in "iuf" or arr.dtype.itemsize > 8:
        raise DataError(f"{what} must hold real numbers (HU), got dtype {arr.dtype}")
    if arr.ndim != ndim:
        layout = "(H, W)" if ndim == 2 else "(Z, H, W)"
        raise DataError(f"{what} must be {layout}, got shape {list(arr.shape)}")
    if ndim == 3 and arr.shape[0] == 0:
        raise DataError(f"{what} of shape {list(arr.shape)} has no slices")
    if min(arr.shape[-2:]) < MIN_SIDE:
        # one sagittal or coronal image reads as a stack of one-pixel-wide axial slices
        plane = (f" (its axial slices are {arr.shape[1]}x{arr.shape[2]}: one sagittal or coronal plane? a 2-D model "
                 "segments axial slices)" if ndim == 3 and min(arr.shape[0], max(arr.shape[1:])) >= MIN_SIDE else "")
        raise DataError(f"{what} of shape {list(arr.shape)} is too small; slices need at least {MIN_SIDE} rows and "
                        f"columns{plane}")
    if max(arr.shape[-2:]) > MAX_SIDE:
        raise DataError(f"{what} of {arr.shape[-2]} x {arr.shape[-1]} is larger than the limit of {MAX_SIDE} rows and "
                        "columns")
    spec.fit_box(*arr.shape[-2:])  # fit=pad: a slice too thin to pad is refused, naming its shape
    if not resize and tuple(arr.shape[-2:]) != spec.size:
        size = f"{'slices are' if ndim == 3 else 'is'} {arr.shape[-2]}x{arr.shape[-1]}"
        raise DataError(f"{what} {size} but this bundle takes {spec.size[0]}x{spec.size[1]} only "
                        "(it was exported without resizing)")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            where = f" (slice {int(np.argwhere(~finite)[0][0])})" if ndim == 3 else ""
            raise DataError(f"{what} holds {bad} NaN or infinite value(s){where}; expected finite HU")
    low, high = float(arr.min()), float(arr.max())
    if low < HU_LIMITS[0] or high > HU_LIMITS[1]:
        raise DataError(f"{what} values span {low:g}..{high:g}; CT stores HU within "
                        f"{HU_LIMITS[0]:g}..{HU_LIMITS[1]:g}")
    if arr.dtype not in KERNEL_DTYPES:
        # checked as the kernels (and libedgeseg) will see them: -1e-50 is -0.0 in float32
        arr = arr.astype(np.float32)
        low, high = float(arr.min()), float(arr.max())
    if arr.dtype.kind == "f" and 0 < high - low <= 2.0 and -2.0 <= low and high <= 2.0:
        raise DataError(f"{what} values span {low:g}..{high:g}, which looks normalised, not HU "
                        f"(air is about -1000); pass the scanner's HU")
    check_has_air(arr, low, high, spec, what)
    return arr


def air_voxels(arr: np.ndarray, low: float) -> int:
    """How many values of ``arr`` (whose minimum is ``low``) lie in ``AIR_HU``."""
    if low > AIR_HU[1]:
        return 0
    return int(np.count_nonzero((arr >= AIR_HU[0]) & (arr <= AIR_HU[1])))


def check_has_air(arr: np.ndarray, low: float, high: float, spec: PreprocessSpec, what: str = "input") -> None:
    """DataError for values (from ``low`` to ``high``) that hold no air or fat where HU must.

    A CT slice of a body holds fat (about -100 HU) and air (-1000): at least ``AIR_PER_MILLE`` per
    mille of its voxels in ``AIR_HU``. Values without them are stored values without their
    RescaleIntercept (HU + 1024, whose only negatives may be padding at -2000), an 8-bit picture,
    MR, or HU clipped at 0. The last is what the model sees anyway when its window starts at 0 or
    above, unless they reach over ``NO_AIR_HIGH`` (where clipped HU do not, and stored values do).
    A constant image (blank, or water) is left alone.
    """
    if low == high or (spec.window[0] >= 0 and high <= NO_AIR_HIGH):
        return
    air = air_voxels(arr, low)
    if air >= 1 and air * 1000 >= AIR_PER_MILLE * arr.size:
        return
    none = ("none below 0 HU" if low >= 0 else
            f"{air} of {arr.size} voxels in the air and fat range {AIR_HU[0]:g}..{AIR_HU[1]:g} HU (under "
            f"{AIR_PER_MILLE / 10:g} %)")
    why = (f"this model's window starts at {spec.window[0]:g} HU" if spec.window[0] < 0
           else f"they reach {high:g}, above any tissue but bone")
    raise DataError(f"{what} values span {low:g}..{high:g}, {none}, where a CT of a body has fat and air "
                    f"(-100, -1000) and {why}: not HU (stored values without RescaleIntercept? an 8-bit image? MR?); "
                    "pass HU = stored value x RescaleSlope + RescaleIntercept")
