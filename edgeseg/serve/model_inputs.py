"""What the served models accept, checked the same way by ``edgeseg serve`` and by the Triton
Python-backend models ``edgeseg triton`` writes.

FP32 is ambiguous: HU and the normalised model input are both float. Values meant for the
other model (HU sent to the network, the pre-processed tensor sent to the pipeline) are
refused with a message naming the model the client probably meant, instead of answered with
a wrong mask.
"""

from __future__ import annotations

import numpy as np

from edgeseg.errors import DataError
from edgeseg.runtime.input_checks import HU_LIMITS, checked_hu
from edgeseg.runtime.postprocess_options import voxel_ml
from edgeseg.serve.protocol import NUMPY_TO_DATATYPE

PIPELINE_SUFFIX = "-pipeline"
# The longest slice side the pipeline takes unless the server is told otherwise (edgeseg serve
# --max-side); the Triton pipeline model uses it as is.
DEFAULT_MAX_SIDE = 4096
PIPELINE_DATATYPES = ("INT16", "UINT16", "FP32")
# The pipeline's optional second input: the voxel spacing a bundle's 3-D filter in mL needs.
SPACING_INPUT = "spacing"
_DATATYPE = {np.dtype(np.int16): "INT16", np.dtype(np.uint16): "UINT16", np.dtype(np.float32): "FP32"}
# How far outside the normalised range the network's input may stray, in widths of that range,
# before it is taken for HU: augmented or differently rounded tensors stay well within it.
NETWORK_RANGE_SLACK = 4.0
# FP32 "HU" within this many widths of the normalised range around it is the normalised tensor.
PIPELINE_RANGE_MARGIN = 0.5


class ModelInputError(DataError):
    """A request the model cannot take; answered 400 (Triton: an error response) with this message."""


def normalised_range(spec) -> tuple[float, float]:
    """The values the spec's pre-processing produces: its window mapped by scale and offset."""
    scale, offset = spec.scale_offset
    ends = sorted(scale * w + offset for w in spec.window)
    return ends[0], ends[1]


def check_network_input(batch: np.ndarray, segmenter, name: str, max_batch: int) -> np.ndarray:
    """``batch`` for model ``name`` (the network), contiguous, or ModelInputError."""
    pipeline = name + PIPELINE_SUFFIX
    if batch.dtype != np.float32:
        hint = f"; CT values (INT16, UINT16, FP32 HU) go to model {pipeline!r}" if batch.dtype.kind in "iu" else ""
        datatype = _datatype_name(batch.dtype)
        raise ModelInputError(f"model {name!r} takes the pre-processed FP32 tensor, got {datatype}{hint}")
    check_network_shape(batch.shape, max_batch)
    try:
        segmenter.runner.check_batch(batch)  # shape, batch size, NaN/inf
    except DataError as exc:
        raise ModelInputError(str(exc)) from None
    low, high = normalised_range(segmenter.spec)
    slack = NETWORK_RANGE_SLACK * (high - low)
    got_low, got_high = float(batch.min()), float(batch.max())
    if got_low < low - slack or got_high > high + slack:
        window = segmenter.spec.window
        raise ModelInputError(
            f"model {name!r} takes the tensor normalised to {low:g}..{high:g} (window {window[0]:g}..{window[1]:g} "
            f"HU); values span {got_low:g}..{got_high:g}, which looks like HU: send CT values to model {pipeline!r}")
    return np.ascontiguousarray(batch)


def check_network_shape(shape: tuple[int, ...], max_batch: int) -> None:
    """The batch limit of the network's input of ``shape``, checked from the shape alone (a
    request's declared shape, before its values are decoded)."""
    if len(shape) == 4 and shape[0] > max_batch:
        raise ModelInputError(f"a request holds at most {max_batch} slices (--max-batch), got {shape[0]}")


def check_pipeline_shape(shape: tuple[int, ...], max_batch: int, max_side: int) -> None:
    """The slice count and side limits of the pipeline's ``hu`` of ``shape`` ([H, W] or [N, H, W];
    other ranks are refused with the values), checked from the shape alone."""
    if len(shape) not in (2, 3):
        return
    stack = (1, *shape) if len(shape) == 2 else tuple(shape)
    if not 1 <= stack[0] <= max_batch:
        raise ModelInputError(f"a request holds 1..{max_batch} slices (--max-batch), got {stack[0]}")
    if max(stack[1:]) > max_side:
        raise ModelInputError(f"slices of {stack[1]}x{stack[2]} exceed the server's limit of "
                              f"{max_side} pixels a side")


def check_pipeline_input(hu: np.ndarray, segmenter, network_name: str, max_batch: int, max_side: int) -> np.ndarray:
    """``hu`` ((H, W) or (N, H, W)) as an (N, H, W) stack for ``predict_volume``, or ModelInputError."""
    name = network_name + PIPELINE_SUFFIX
    datatype = _DATATYPE.get(hu.dtype)
    if datatype is None:
        raise ModelInputError(f"model {name!r} takes hu as one of {list(PIPELINE_DATATYPES)}, "
                              f"got {_datatype_name(hu.dtype)}")
    if hu.ndim not in (2, 3):
        hint = f"; the pre-processed (N, 1, H, W) tensor goes to model {network_name!r}" if hu.ndim == 4 else ""
        raise ModelInputError(f"model {name!r} takes hu of shape [H, W] or [N, H, W], got {list(hu.shape)}{hint}")
    stack = hu[None] if hu.ndim == 2 else hu
    check_pipeline_shape(hu.shape, max_batch, max_side)
    if hu.dtype == np.float32 and stack.size:  # an empty stack is refused as too small below
        _check_fp32_hu(stack, segmenter.spec, network_name)
    try:
        stack = checked_hu(stack, segmenter.spec, ndim=3, resize=segmenter.manifest.resize_input, what="input 'hu'")
    except DataError as exc:
        raise ModelInputError(str(exc)) from None
    return np.ascontiguousarray(stack)


def check_pipeline_spacing(spacing: np.ndarray | None, segmenter,
                           network_name: str) -> tuple[float, float, float] | None:
    """The optional input ``spacing`` (FP32, shape [3]: z, y, x in mm) of the pipeline model as a
    tuple, checked as ``es_segment_volume_spaced`` checks one, or ModelInputError. None where the
    request has none, unless a class of the bundle removes 3-D components by mL: such a request is
    refused here, before the network runs. A bundle without such a class leaves a spacing unused."""
    name = network_name + PIPELINE_SUFFIX
    if spacing is None:
        if segmenter.postprocess.needs_spacing:
            raise ModelInputError(
                f"model {name!r} removes 3-D components of {segmenter.postprocess.ml_filters(segmenter.labels)}, "
                f"which needs the voxel spacing: send the input {SPACING_INPUT!r} (FP32, shape [3]: z, y, x in mm)")
        return None
    if spacing.dtype != np.float32 or spacing.shape != (3,):
        raise ModelInputError(f"model {name!r} takes input {SPACING_INPUT!r} as FP32 of shape [3] (z, y, x in mm), "
                              f"got {_datatype_name(spacing.dtype)} {list(spacing.shape)}")
    values = tuple(float(v) for v in spacing)
    try:
        voxel_ml(values)
    except DataError as exc:
        raise ModelInputError(f"input {SPACING_INPUT!r}: {exc}") from None
    return values


def _datatype_name(dtype: np.dtype) -> str:
    """``dtype`` as the protocol names it (FP16, not numpy's FLOAT16), as the client sent it."""
    return NUMPY_TO_DATATYPE.get(np.dtype(dtype).newbyteorder("="), str(dtype).upper())


def _check_fp32_hu(stack: np.ndarray, spec, network_name: str) -> None:
    finite = np.isfinite(stack)
    if not finite.all():
        raise ModelInputError(f"input 'hu' holds {int(stack.size - np.count_nonzero(finite))} NaN or infinite value(s)")
    got_low, got_high = float(stack.min()), float(stack.max())
    if got_low < HU_LIMITS[0] or got_high > HU_LIMITS[1]:
        raise ModelInputError(f"input 'hu' values span {got_low:g}..{got_high:g}, which cannot be CT values "
                              f"(HU lie within {HU_LIMITS[0]:g}..{HU_LIMITS[1]:g})")
    low, high = normalised_range(spec)
    margin = PIPELINE_RANGE_MARGIN * (high - low)
    # A constant slice (blank, or water at 0 HU) is valid CT whatever its value: only a real
    # spread inside the normalised range says the client sent the pre-processed tensor.
    if got_low < got_high and low - margin <= got_low and got_high <= high + margin:
        raise ModelInputError(
            f"input 'hu' values span {got_low:g}..{got_high:g}, the range of the pre-processed tensor "
            f"({low:g}..{high:g}), not HU (air is about -1000): send CT values here, or the pre-processed "
            f"(N, 1, H, W) tensor to model {network_name!r}")
